"""Scheduler cases shared by SQLite (unit) and PostgreSQL (integration)."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from connector.store import StateStore

ROOT = Path(__file__).resolve().parents[1]


def two_schedulers_run_each_slot_once(url: str, tmp_path: Path, seconds: float = 6.0) -> None:
    with StateStore(url) as store:
        store.migrate()
    out = tmp_path / "ticks.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.support.scheduler_worker", url, str(out)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "started", p.stdout.read()
        time.sleep(seconds)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        logs = [p.communicate(timeout=30)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    ticks = out.read_text().splitlines()
    with StateStore(url) as store:
        runs = store.job_runs.list("tick")
    slots = collections.Counter(r.slot for r in runs)
    assert len(ticks) >= seconds - 2, (ticks, logs)
    # one execution per run row, one run row per slot: no slot ran twice
    assert len(ticks) == len(runs) == len(slots) and max(slots.values()) == 1
    assert all(r.status == "ok" for r in runs)


def start_together(stores: list) -> tuple[list, list[str]]:
    """Start one scheduler per store, all at the same instant; the started ones and the errors."""
    import threading

    from sync.scheduler import Scheduler, interval


    barrier, errors, started = threading.Barrier(len(stores)), [], []

    def start(store) -> None:
        scheduler = Scheduler(store, {"tick": lambda: None}, {"tick": interval(3600)})
        barrier.wait()
        try:
            started.append(scheduler.start())
        except Exception as exc:  # noqa: BLE001 - collected and asserted by the caller
            errors.append(repr(exc))

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return started, errors
