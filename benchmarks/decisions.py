"""Latency of ``POST /v1/decisions`` from concurrent clients, beside ``/v1/predict`` (run by hand).

Starts the ML backend (``benchmarks/serve.py``'s, on a small Rotten Tomatoes model) and the sync
service's decision API (uvicorn, the store in SQLite or ``--db-url``), then with ``--clients``
closed-loop clients measures, in the same run:

- ``/v1/predict`` with one text per request (the backend alone: the baseline);
- decisions taken automatically on the **caller's confidence** (a certified threshold for the
  caller's model: the store is seeded with 100 approved reviews of its outputs);
- decisions taken automatically on **our model's** prediction (the API calls the backend; the
  loop's threshold review certified 0.5);
- and the throughput of **pending** decisions into a real Label Studio: decisions posted below the
  threshold, then the sync's push pass until every one is a task.

    PYTHONPATH=. python benchmarks/decisions.py --clients 8 --requests 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serve import _start_backend

TOKEN = "bench-token"
TASK = """name = "bench decisions"
labels = ["fresh", "rotten"]
[thresholds]
target_error = 0.05
min_n = 20
[decisions]
audit_share = 0.0
"""
APP = """
import uvicorn
from connector.store import StateStore
from connector.task_spec import TaskSpec
from sync.runner import mount_decisions
from sync.settings import SyncSettings
from sync.webhooks import PullRequests, create_webhook_app
settings = SyncSettings()
store = StateStore(settings.db_url)
app = create_webhook_app(PullRequests(), secret=None)
mount_decisions(app, settings, store, TaskSpec.load(settings.task))
uvicorn.run(app, host="127.0.0.1", port=settings.sync_port, log_level="warning", access_log=False)
"""


def _seed(db_url: str, task: Path) -> None:
    """Evidence that certifies the caller's model (100 approved reviews at 0.99) and a threshold
    review of our model certifying 0.5."""
    from connector.snapshots import ThresholdsSnapshot, write_snapshot
    from connector.store import StateStore
    from connector.task_spec import TaskSpec

    spec = TaskSpec.load(task)
    with StateStore(db_url) as store:
        store.migrate()
        for i in range(100):
            d, _ = store.online.create({"idempotency_key": f"seed-{i}", "kind": "label", "source": "caller:bench",
                                        "request": {}, "output": {"label": "fresh"}, "status": "pending_review",
                                        "rule": "threshold:off", "reason": "uncertified", "score": 0.99,
                                        "raw_score": 0.99}, item={"text": f"seed {i}", "data": {}},
                                       suggestion={"label": "fresh", "confidence": 0.99})
            store.online.settle(d.id, outcome="approve", reviewer="seed")
        write_snapshot(store, ThresholdsSnapshot(threshold=0.5, meets_target=True, adapt=True,
                                                 target_error=spec.thresholds.target_error, n_evidence=500))


def _start_api(db_url: str, task: Path, backend: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "HITL_DB_URL": db_url, "HITL_TASK": str(task), "HITL_BACKEND_URL": backend,
           "HITL_SYNC_PORT": str(port), "HITL_DECISIONS_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", APP], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"decision API did not start: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")


def _post(host: str, port: int, path: str, body: dict) -> bytes:
    raw = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(raw)}\r\n\r\n").encode() + raw


async def _client(host: str, port: int, bodies: list[bytes], lat: list[float], statuses: dict[str, int],
                  start: asyncio.Event) -> None:
    """One keep-alive connection sending each request and reading its response (no pipelining)."""
    reader, writer = await asyncio.open_connection(host, port)
    await start.wait()
    for body in bodies:
        t0 = time.perf_counter()
        writer.write(body)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        payload = await reader.readexactly(length)
        lat.append((time.perf_counter() - t0) * 1000)
        code = head.split(b" ", 2)[1].decode()
        status = json.loads(payload).get("status", code) if code in ("200", "201") else f"HTTP {code}"
        statuses[status] = statuses.get(status, 0) + 1
    writer.close()


def load(url: str, path: str, make: list[list[dict]]) -> dict:
    """``len(make)`` concurrent clients, each posting its bodies back to back; latency figures."""
    host, port = url.split("//")[1].split(":")

    async def go() -> dict:
        lat: list[float] = []
        statuses: dict[str, int] = {}
        start = asyncio.Event()
        tasks = [asyncio.create_task(_client(host, int(port), [_post(host, int(port), path, b) for b in bodies],
                                             lat, statuses, start)) for bodies in make]
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
        a = np.array(lat)
        return {"requests": len(a), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
                "max_ms": float(a.max()), "per_s": len(a) / wall, "statuses": statuses}

    return asyncio.run(go())


def _line(name: str, r: dict, base: dict | None = None) -> str:
    ratio = f"  (P50 ×{r['p50_ms'] / base['p50_ms']:.2f}, P99 ×{r['p99_ms'] / base['p99_ms']:.2f} of /v1/predict)" \
        if base else ""
    return (f"  {name:<34} p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  {r['per_s']:6.0f}/s  "
            f"{r['statuses']}{ratio}")


def _pending_into_label_studio(api: str, db_url: str, task: Path, texts: list[str], n: int, clients: int) -> dict:
    """Post ``n`` decisions below the threshold, then push them to a throwaway Label Studio."""
    from connector.store import StateStore
    from connector.task_spec import TaskSpec
    from connector.tools.label_studio import LabelStudioTool
    from hitl.local.label_studio_server import start_from_template, throwaway_credentials
    from sync.service import SyncService

    bodies = [[{"idempotency_key": f"pending-{k}-{i}", "input": {"text": texts[(k * 1000 + i) % len(texts)]},
                "output": {"label": "rotten", "confidence": 0.6, "model": "bench"}} for i in range(n // clients)]
              for k in range(clients)]
    posted = load(api, "/v1/decisions", bodies)
    server = start_from_template(Path(tempfile.mkdtemp(prefix="hitl-bench-ls-")), **throwaway_credentials())
    try:
        spec = TaskSpec.load(task)
        with StateStore(db_url) as store:
            sync = SyncService(store, spec, LabelStudioTool(server.url, server.token))
            _ = sync.project
            t0 = time.perf_counter()
            pushed = sync.push_pass().counts.get("pushed", 0)
            push_s = time.perf_counter() - t0
    finally:
        server.stop()
    return {"posted": posted, "pushed": pushed, "push_s": push_s,
            "per_s": pushed / push_s if push_s else 0.0,
            "end_to_end_per_s": pushed / (push_s + posted["requests"] / posted["per_s"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=100, help="requests per client and run")
    ap.add_argument("--pending", type=int, default=400, help="pending decisions pushed to Label Studio (0: skip)")
    ap.add_argument("--db-url", default=None, help="the store (default: SQLite in a temporary folder)")
    ap.add_argument("--model-root", type=Path, default=None)
    args = ap.parse_args()
    from connector.datasets import rotten_tomatoes

    texts = rotten_tomatoes(full=True).texts
    work = Path(tempfile.mkdtemp(prefix="hitl-bench-decisions-"))
    task = work / "task.toml"
    task.write_text(TASK)
    db_url = args.db_url or f"sqlite:///{work}/state.db"
    _seed(db_url, task)
    root = args.model_root or Path(tempfile.gettempdir()) / "hitl-bench-models"
    backend = _start_backend(root, 9392, {})
    api = _start_api(db_url, task, "http://127.0.0.1:9392", 9393)
    url = "http://127.0.0.1:9393"
    c, n = args.clients, args.requests
    try:
        print(f"{c} clients x {n} requests each, store {db_url.split(':')[0]}")
        load("http://127.0.0.1:9392", "/v1/predict", [[{"texts": [texts[i]]} for i in range(20)]])  # warm up
        predict = load("http://127.0.0.1:9392", "/v1/predict",
                       [[{"texts": [texts[(k * n + i) % len(texts)]]} for i in range(n)] for k in range(c)])
        print(_line("/v1/predict (baseline)", predict))

        def bodies(tag: str, output: dict | None) -> list[list[dict]]:
            return [[{"idempotency_key": f"{tag}-{k}-{i}", "input": {"text": texts[(k * n + i) % len(texts)]},
                      **({"output": output} if output else {})} for i in range(n)] for k in range(c)]

        load(url, "/v1/decisions", [bodies("warm", {"label": "fresh", "confidence": 0.99, "model": "bench"})[0][:20],
                                    bodies("warm-ours", None)[0][:20]])  # imports, caches, connections
        caller = load(url, "/v1/decisions", bodies("caller", {"label": "fresh", "confidence": 0.99, "model": "bench"}))
        print(_line("decisions, caller's confidence", caller, predict))
        ours = load(url, "/v1/decisions", bodies("ours", None))
        print(_line("decisions, our model predicting", ours, predict))
        again = load(url, "/v1/decisions", bodies("caller", {"label": "fresh", "confidence": 0.99, "model": "bench"}))
        print(_line("the same keys again (idempotent)", again, predict))
        report = {"clients": c, "requests_per_client": n, "store": db_url.split(":")[0], "predict": predict,
                  "caller": caller, "ours": ours, "repeat": again}
        if args.pending:
            p = _pending_into_label_studio(url, db_url, task, texts, args.pending, c)
            print(_line("decisions held for review", p["posted"], predict))
            print(f"  pending into Label Studio: {p['pushed']} tasks in {p['push_s']:.1f} s ({p['per_s']:.0f}/s; "
                  f"post + push {p['end_to_end_per_s']:.0f}/s)")
            report["pending"] = p
        out = ROOT / "benchmarks" / "out"
        out.mkdir(parents=True, exist_ok=True)
        (out / "decisions.json").write_text(json.dumps(report, indent=2))
    finally:
        for proc in (api, backend):
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
