"""Pull bookkeeping, once for every tool: a tool's :class:`Pull` -> the store's annotation rows.

Each returned answer becomes a row for the item its remote item was pushed as (answers to items
we did not push are ignored, with a warning). When the tool returns changed items whole (Label
Studio), a stored answer to a returned item that the item no longer has is marked ``deleted``,
stamped with the item's ``updated_at``. When it returns every answer in the project (Argilla),
absence is weaker evidence: one search answer can be short of a record that still exists. So
there a stored answer is deleted only when absent from two such pulls in a row, keeping its own
``updated_at`` (``settle_absent``), and an answer the pull returns is live again whatever its time
(its rows carry ``revive``): a deletion we inferred never outweighs the tool showing the answer.
The store's upsert keyed by answer id and ``updated_at`` makes a repeated pull change nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from connector.store import AbsenceResult, StateStore
from connector.tools.base import Pull

log = logging.getLogger(__name__)


def annotation_rows(store: StateStore, tool: str, project: str, pulled: Pull) -> list[dict[str, Any]]:
    """The rows ``store.annotations.upsert`` takes for one pull: the answers, then the deletions."""
    pushes: dict[str, int | None] = {}

    def item_of(remote_id: str, external_id: str | None) -> int | None:
        if remote_id not in pushes:
            push = store.pushes.find(tool, project, remote_id)
            if push is None:
                log.warning("%s item %s (external id %s) was not pushed by us; its answers are ignored",
                            tool, remote_id, external_id)
            pushes[remote_id] = None if push is None else push.item_id
        return pushes[remote_id]

    def row(item_id: int, remote_id: str, annotator: str, value: list[str], status: str, updated_at: str,
            lead_time: float | None, extra: dict[str, Any] | None) -> dict[str, Any]:
        return {"item_id": item_id, "tool": tool, "project": project, "remote_id": remote_id, "annotator": annotator,
                "value": value, "status": status, "remote_updated_at": updated_at, "lead_time": lead_time,
                "extra": extra}

    whole_project = pulled.items is None
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for a in pulled.answers:
        item_id = item_of(a.item_remote_id, a.external_id)
        if item_id is not None:
            seen.add(a.remote_id)
            rows.append(row(item_id, a.remote_id, a.annotator, a.value, a.status, a.updated_at, a.lead_time,
                            a.extra))
            if whole_project:
                rows[-1]["revive"] = True
    if pulled.items is None:  # the answers absent from it are settled by ``settle_absent``
        return rows
    stamps: dict[int, str] = {}  # item id -> when its missing answers count as deleted
    for it in pulled.items:  # the returned items' answers were returned
        if (item_id := item_of(it.remote_id, it.external_id)) is not None:
            stamps[item_id] = it.updated_at
    stored = store.annotations.list(list(stamps), tool=tool, project=project) if stamps else []
    for old in stored:
        if old.remote_id not in seen and old.status != "deleted":
            rows.append(row(old.item_id, old.remote_id, old.annotator, old.value, "deleted", stamps[old.item_id],
                            old.lead_time, old.extra))
    return rows


def settle_absent(store: StateStore, tool: str, project: str, pulled: Pull) -> AbsenceResult:
    """After a whole-project pull (``pulled.items is None``), upserted: the stored answers it did not
    return are marked missing, or deleted when they were missing from the previous one too."""
    if pulled.items is not None:
        return AbsenceResult()
    return store.annotations.settle_absent(tool, project, (a.remote_id for a in pulled.answers))
