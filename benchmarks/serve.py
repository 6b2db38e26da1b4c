"""Latency of single-task Label Studio ``/predict`` calls from concurrent clients (run by hand).

Against a running backend (``--url``), or one this script starts on a model root (``--model-root``;
trains a small Rotten Tomatoes model there first if it holds none). Each client is a thread with
its own keep-alive connection sending one task per request, as Label Studio does for one task.

    PYTHONPATH=. python benchmarks/serve.py --clients 8 --requests 200
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

CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
          '<Choice value="fresh"/><Choice value="rotten"/></Choices></View>')


def _start_backend(model_root: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    from connector.model_store import ModelStore

    if ModelStore(model_root).current() is None:
        subprocess.run([sys.executable, "-m", "hitl.cli", "train", "rotten_tomatoes", "--limit", "1500",
                        "--model-root", str(model_root)], check=True, cwd=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "ml_backend"], cwd=ROOT, start_new_session=True,
                            env={**os.environ, "HITL_MODEL_ROOT": str(model_root), "HITL_PORT": str(port), **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("backend did not start")


async def _client(host: str, port: int, bodies: list[bytes], latencies: list[float], errors: list[int],
                  interval: float, start: asyncio.Event) -> None:
    """One keep-alive connection; sends each body and waits for its response (no pipelining)."""
    reader, writer = await asyncio.open_connection(host, port)
    await start.wait()
    next_at = time.perf_counter()
    for body in bodies:
        if interval:
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        t0 = time.perf_counter()
        writer.write(body)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        await reader.readexactly(length)
        latencies.append((time.perf_counter() - t0) * 1000)
        if not head.startswith(b"HTTP/1.1 200"):
            errors[0] += 1
    writer.close()


def _request(host: str, port: int, text: str, i: int) -> bytes:
    body = json.dumps({"tasks": [{"id": i, "data": {"text": text}}], "label_config": CONFIG, "project": "1.1"}).encode()
    return (f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def run_load(url: str, texts: list[str], clients: int, per_client: int, *, rate: float = 0.0,
             warmup: int = 10) -> dict[str, float]:
    """``clients`` concurrent connections, ``per_client`` single-task requests each, back to back
    (closed loop) or at ``rate`` requests/s per client. A lean asyncio client, so the load
    generator takes little of the CPU it shares with the server."""
    host, port = url.split("//")[1].split(":")
    port = int(port)

    async def go() -> dict[str, float]:
        warm_lat: list[float] = []
        start = asyncio.Event()
        start.set()
        await _client(host, port, [_request(host, port, t, i) for i, t in enumerate(texts[:warmup])], warm_lat, [0], 0, start)
        lat: list[float] = []
        errors = [0]
        start = asyncio.Event()
        tasks = [asyncio.create_task(_client(
            host, port, [_request(host, port, texts[(k * per_client + i) % len(texts)], i) for i in range(per_client)],
            lat, errors, 1.0 / rate if rate else 0.0, start)) for k in range(clients)]
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
        a = np.array(lat)
        return {"clients": clients, "rate_per_client": rate, "requests": len(a), "errors": errors[0],
                "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
                "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()), "texts_per_s": len(a) / wall}

    return asyncio.run(go())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running backend; default: start one")
    ap.add_argument("--model-root", type=Path, default=None)
    ap.add_argument("--port", type=int, default=9391)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200, help="requests per client")
    ap.add_argument("--paced-rate", type=float, default=10.0,
                    help="requests/s per client for the paced run (annotators opening tasks); 0 skips it")
    ap.add_argument("--max-wait-ms", default=None, help="HITL_MAX_WAIT_MS for the started backend")
    args = ap.parse_args()
    from connector.datasets import rotten_tomatoes

    texts = rotten_tomatoes(full=True).texts
    proc = None
    if not args.url:
        root = args.model_root or Path(tempfile.gettempdir()) / "hitl-bench-models"
        env = {"HITL_MAX_WAIT_MS": args.max_wait_ms} if args.max_wait_ms else {}
        proc = _start_backend(root, args.port, env)
        args.url = f"http://127.0.0.1:{args.port}"
    try:
        print(f"{args.clients} clients x {args.requests} single-task /predict requests against {args.url}")
        single = run_load(args.url, texts, 1, args.requests)
        print(f"  1 client : p50 {single['p50_ms']:.1f} ms  p99 {single['p99_ms']:.1f} ms  {single['texts_per_s']:.0f} texts/s")
        res = run_load(args.url, texts, args.clients, args.requests)
        print(f"  {args.clients} clients, back to back: p50 {res['p50_ms']:.1f} ms  p90 {res['p90_ms']:.1f} ms  "
              f"p99 {res['p99_ms']:.1f} ms  max {res['max_ms']:.1f} ms  {res['texts_per_s']:.0f} texts/s  errors {res['errors']}")
        report = {"single": single, "concurrent": res}
        if args.paced_rate:
            paced = run_load(args.url, texts, args.clients, args.requests, rate=args.paced_rate)
            print(f"  {args.clients} clients at {args.paced_rate:g} req/s each: p50 {paced['p50_ms']:.1f} ms  "
                  f"p99 {paced['p99_ms']:.1f} ms  max {paced['max_ms']:.1f} ms  errors {paced['errors']}")
            report["paced"] = paced
        health = httpx.get(f"{args.url}/health").json()
        if "batches_run" in health:
            print(f"  server: {health['items_run']} texts in {health['batches_run']} model calls "
                  f"(mean batch {health['items_run'] / max(1, health['batches_run']):.1f})")
        out = ROOT / "benchmarks" / "out"
        out.mkdir(parents=True, exist_ok=True)
        (out / "serve.json").write_text(json.dumps(report, indent=2))
    finally:
        if proc:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
