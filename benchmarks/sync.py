"""Sync throughput against a real Label Studio started for the run (run by hand, not in CI).

1. Push 10,000 routed items through ``SyncService.push_pass`` (Label Studio tool) (store bookkeeping, pending →
   confirmed, 500 tasks per import) versus one bare ``projects.import_tasks`` bulk call of the
   same tasks, into fresh projects, in the same run; prints the ratio.
2. Pull 100 new annotations from a project of 10,000 tasks and from one of 1,000 tasks (the
   incremental cursor should make both cost about the same).

    PYTHONPATH=. .venv/bin/python benchmarks/sync.py [--n 10000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.base import AnnotationTool
from connector.tools.label_studio import LabelStudioTool
from connector.tools.offline import OfflineTool
from hitl.local.label_studio_server import start_from_template, throwaway_credentials
from sync.service import SyncService


def _texts(n: int) -> list[str]:
    try:
        from connector.datasets import rotten_tomatoes

        base = rotten_tomatoes(full=True).texts
    except FileNotFoundError:
        base = [f"synthetic review number {i}" for i in range(1000)]
    return [f"{base[i % len(base)]} [{i}]" for i in range(n)]


def _prepared_sync(workdir: Path, client: AnnotationTool, title: str, n: int) -> SyncService:
    """A store with ``n`` items predicted and routed to review, and a sync bound to a new project."""
    store = StateStore(f"sqlite:///{workdir / (title.replace(' ', '_') + '.db')}")
    store.migrate()
    store.items.ingest([{"id": f"b-{i}", "text": t} for i, t in enumerate(_texts(n))])
    rng = np.random.default_rng(0)
    items = store.items.list(state="ingested")
    p = rng.uniform(0.5, 0.9, size=len(items))
    store.predictions.record([{"item_id": it.id, "model_version": "bench", "label": "fresh", "confidence": float(c),
                               "probabilities": {"fresh": float(c), "rotten": float(1 - c)}}
                              for it, c in zip(items, p)])
    spec = TaskSpec(name=title, labels=["fresh", "rotten"], routing={"accept_threshold": 1.0, "spot_check_rate": 0.0})
    sync = SyncService(store, spec, client)
    sync.route_pass()
    return sync


def bench_push(workdir: Path, client: LabelStudioTool, n: int, batch: int = 500,
               rounds: int = 2) -> dict[str, float]:
    """Alternate bare and ours (bare first, then ours first), each into a fresh project; the
    ratio of the summed times, so the server's drift between runs hits both sides alike."""
    bare_s, ours_s = [], []
    for r in range(rounds):
        sync = _prepared_sync(workdir, client, f"bench push sync {r}", n)
        routed = sync.store.decisions.routed(action="review")
        preds = {p.item_id: p for p in sync.store.predictions.list([it.id for it, _ in routed])}
        bare_tasks = [{"data": {**sync._push_item(it, d, preds[it.id]).data, "hitl_id": it.external_id},
                       "predictions": [{"result": [sync.control.result([preds[it.id].label])],
                                        "score": preds[it.id].confidence, "model_version": "bench"}]}
                      for it, d in routed]
        bare_project = client.project_id(f"bench push bare {r}", sync.spec.label_config())
        _ = sync.project  # both projects exist before any timing

        def bare(project: int = bare_project, tasks: list = bare_tasks) -> None:
            t0 = time.perf_counter()
            client._ls.projects.import_tasks(project, request=tasks, return_task_ids=True)
            bare_s.append(time.perf_counter() - t0)

        def ours(sync: SyncService = sync) -> None:
            t0 = time.perf_counter()
            report = sync.push_pass(batch=batch)
            ours_s.append(time.perf_counter() - t0)
            assert report.counts["pushed"] == n, report.counts

        for step in ((bare, ours) if r % 2 == 0 else (ours, bare)):
            step()
    bare_t, ours_t = sum(bare_s), sum(ours_s)
    out = {"n": n, "batch": batch, "rounds": rounds, "bare_s": bare_s, "ours_s": ours_s,
           "bare_per_s": n * rounds / bare_t, "ours_per_s": n * rounds / ours_t, "ratio": bare_t / ours_t}
    print(f"push {n} items x {rounds} rounds ({batch} per call): bare import_tasks {out['bare_per_s']:6.0f} tasks/s "
          f"{[round(x, 1) for x in bare_s]} s | push_pass {out['ours_per_s']:6.0f} tasks/s "
          f"{[round(x, 1) for x in ours_s]} s | ours / bare = {out['ratio']:.2f}")
    return out


def bench_pull(workdir: Path, client: LabelStudioTool, n_tasks: int, n_annotations: int = 100) -> float:
    sync = _prepared_sync(workdir, client, f"bench pull {n_tasks}", n_tasks)
    sync.push_pass(batch=1000)
    sync.pull_pass()  # sets the cursor past the import
    time.sleep(4)
    sync.pull_pass()  # the periodic loop's next pass: the cursor has settled
    tasks = sorted(client.find(sync.project).values())
    rng = np.random.default_rng(1)
    for t in rng.choice(tasks, size=n_annotations, replace=False):
        client.annotate(int(t), [sync.control.result(["fresh"])])
    t0 = time.perf_counter()
    report = sync.pull_pass()
    secs = time.perf_counter() - t0
    assert report.counts["inserted"] == n_annotations, report.counts
    print(f"pull {n_annotations} new annotations from a project of {n_tasks:6d} tasks: {secs:.2f} s")
    return secs


def bench_argilla_push(workdir: Path, n: int) -> dict[str, float]:
    """``SyncService.push_pass`` (Argilla tool) against bare ``dataset.records.log`` of the same records."""
    import argilla as rg

    from connector.tools.argilla import ArgillaTool
    from tests.support.argilla_stack import start as start_argilla

    stack = start_argilla(workdir / "argilla")
    try:
        client = ArgillaTool(stack.url, stack.api_key)
        prepared = _prepared_sync(workdir, OfflineTool(), "argilla bench", n)  # fills a store, routes to review
        spec = TaskSpec(name="bench-argilla-ours", tool="argilla", labels=["fresh", "rotten"])
        sync = SyncService(prepared.store, spec, client)
        bare_ds = client.ensure_dataset("bench-argilla-bare", text_field="text", labels=["fresh", "rotten"])
        routed = prepared.store.decisions.routed(action="review")
        preds = {p.item_id: p for p in prepared.store.predictions.list([it.id for it, _ in routed])}
        records = [rg.Record(id=it.external_id, fields={"text": it.text},
                             metadata={"reason": d.reason, "priority": float(d.priority),
                                       "confidence": float(preds[it.id].confidence)},
                             suggestions=[rg.Suggestion("label", preds[it.id].label,
                                                        score=float(preds[it.id].confidence), agent="bench")])
                   for it, d in routed]
        t0 = time.perf_counter()
        bare_ds.records.log(records, batch_size=500)
        bare = time.perf_counter() - t0
        _ = sync.project  # the dataset exists before the timing
        t0 = time.perf_counter()
        report = sync.push_pass(batch=500)
        ours = time.perf_counter() - t0
        assert report.counts["pushed"] == n, report.counts
    finally:
        stack.stop()
    ratio = bare / ours
    print(f"argilla push {n} items: bare records.log {n / bare:6.0f} records/s ({bare:.1f} s) | "
          f"push_pass {n / ours:6.0f} records/s ({ours:.1f} s) | ours / bare = {ratio:.2f}")
    return {"n": n, "bare_s": bare, "ours_s": ours, "ratio": ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--argilla-n", type=int, default=None, help="items for the Argilla push (default: --n)")
    ap.add_argument("--push-batch", type=int, default=2000, help="tasks per import call of the push pass")
    ap.add_argument("--skip-label-studio", action="store_true")
    ap.add_argument("--skip-argilla", action="store_true")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="hitl-bench-sync-"))
    results: dict = {}
    if not args.skip_label_studio:
        server = start_from_template(workdir, **throwaway_credentials())
        try:
            client = LabelStudioTool(server.url, server.token)
            results["push"] = bench_push(workdir, client, args.n, args.push_batch)
            small, large = bench_pull(workdir, client, 1_000), bench_pull(workdir, client, args.n)
            results["pull"] = {"1000_s": small, f"{args.n}_s": large, "ratio": large / small}
            print(f"pull cost, {args.n} vs 1,000 tasks: {large / small:.2f}x")
        finally:
            server.stop()
    if not args.skip_argilla:
        results["argilla_push"] = bench_argilla_push(workdir, args.argilla_n or args.n)
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sync.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
