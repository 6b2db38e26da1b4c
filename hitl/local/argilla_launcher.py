"""Run argilla-server (``server``) or its rq worker (``worker``) against the osmem OpenSearch emulator.

Run by the argilla-server venv's own Python (never imported by our package,
and importing nothing from it): ``python argilla_launcher.py server --host H --port P`` or
``python argilla_launcher.py worker`` (or ``reindex``, which rebuilds the search index from the
database); settings come from the ``ARGILLA_*`` environment.

Why it exists: no real Elasticsearch/OpenSearch can run on our test machines, so the tests use
``osmem-server``, an in-memory OpenSearch emulator. The emulator has no scripted updates
(``_update`` with a ``script`` body), which argilla-server 2.8.0 uses in three methods of
``OpenSearchEngine``: ``update_record_response``, ``delete_record_response`` and
``delete_record_suggestion``. This launcher replaces those three, inside the server and worker
processes, with a read-modify-write of the indexed document (get ``_source``, change it in
Python, index it back with ``refresh=True``) that has the same effect as the Painless scripts.
Everything else in argilla-server runs unchanged.
"""

from __future__ import annotations

import argparse
from typing import Any


def patch_opensearch_engine() -> None:
    from argilla_server.search_engine.commons import es_index_name_for_dataset
    from argilla_server.search_engine.opensearch import OpenSearchEngine

    async def _rewrite(self: Any, index_name: str, record_id: str, change) -> None:
        doc = await self.client.get(index=index_name, id=record_id)
        source = dict(doc["_source"])
        change(source)
        await self.client.index(index=index_name, id=record_id, body=source, refresh=True)

    async def update_record_response(self: Any, response: Any) -> None:
        record = response.record
        es_response = self._map_record_response_to_es(response)

        def change(source: dict) -> None:
            kept = [r for r in source.get("responses") or [] if str(r.get("id")) != str(es_response["id"])]
            source["responses"] = [*kept, es_response]

        await _rewrite(self, es_index_name_for_dataset(record.dataset), str(record.id), change)

    async def delete_record_response(self: Any, response: Any) -> None:
        record = response.record

        def change(source: dict) -> None:
            if source.get("responses") is not None:
                source["responses"] = [r for r in source["responses"] if str(r.get("id")) != str(response.id)]

        await _rewrite(self, es_index_name_for_dataset(record.dataset), str(record.id), change)

    async def delete_record_suggestion(self: Any, suggestion: Any) -> None:
        def change(source: dict) -> None:
            (source.get("suggestions") or {}).pop(suggestion.question.name, None)

        await _rewrite(self, es_index_name_for_dataset(suggestion.record.dataset), str(suggestion.record_id), change)

    OpenSearchEngine.update_record_response = update_record_response
    OpenSearchEngine.delete_record_response = delete_record_response
    OpenSearchEngine.delete_record_suggestion = delete_record_suggestion


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("server")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, required=True)
    sub.add_parser("worker")
    sub.add_parser("reindex")
    args = parser.parse_args(argv)

    patch_opensearch_engine()
    if args.command == "reindex":  # rebuild the (in-memory) index from the database
        import asyncio

        from argilla_server.cli.search_engine.reindex import _reindex

        asyncio.run(_reindex())
    elif args.command == "server":
        import uvicorn

        uvicorn.run("argilla_server:app", host=args.host, port=args.port, access_log=False, log_level="warning")
    else:
        from argilla_server.jobs.queues import DEFAULT_QUEUE, HIGH_QUEUE, REDIS_CONNECTION
        from rq import Worker

        # one worker (argilla's CLI starts a pool of two); rq forks each job's work horse from this
        # process, so the jobs see the patched class too. The scheduler runs the webhook retries.
        Worker([HIGH_QUEUE.name, DEFAULT_QUEUE.name], connection=REDIS_CONNECTION).work(with_scheduler=True)


if __name__ == "__main__":
    main()
