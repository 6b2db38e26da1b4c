"""Soak: the whole local stack under steady load for ``--minutes`` (run by hand, not in CI).

    PYTHONPATH=. .venv/bin/python benchmarks/soak.py --minutes 10

What runs: the stack ``hitl up`` starts (``hitl.local.stack.up``: Label Studio on SQLite, the ML
backend, the scheduler with its webhook receivers), in a temporary var dir, on free loopback ports,
with the demo task (500 Rotten Tomatoes snippets, 60 seed labels, a first model). Label Studio's
data dir is a copy of the migrated template the tests use (no 45 s of migrations); the sync
interval is short (``--sync-interval``, 10 s). Against it, for ``--minutes``:

- ``--clients`` (8) closed request loops on loopback, one keep-alive connection each, sending one
  Label Studio ``/predict`` task per request and waiting for its answer (``--think-ms`` between);
- one annotator creating annotations in Label Studio through its API, for the tasks the sync
  pushed (the snippets' true labels), one every ``--annotate-every`` seconds, so answers flow back;
- one webhook sender posting Label Studio events every ``--webhook-every`` seconds to the
  scheduler's receiver (with its ``X-Hitl-Secret``; every 10th without it, which must answer 401)
  and to the backend's ``/webhook``;
- the scheduler's own sync passes (on its interval and on each pull webhook);
- in the middle, a retraining (``hitl scheduler once retrain``: the scheduler's retrain job, its
  lock and run record, in a process of its own) and the hot swap: the backend's poller picks up
  the promoted version without a restart. When the candidate is not better on held-out labels
  (so not promoted), it is promoted with ``hitl promote`` so that the swap still happens.

The long-running scheduler's own retraining is moved off its interval (``HITL_RETRAIN_CRON`` set
half a year ahead) for the run: a retraining loads torch and the encoder into the process that
runs it (about +400 MB over a scheduler of ~100 MB, kept afterwards), a one-time step that the
RSS criterion would read as growth. The retrain process's peak RSS is reported beside the others.

Every 5 s the RSS of each service's process group (Label Studio, ML backend, scheduler) is
sampled from /proc. At the end: errors (any non-2xx, unexpected answer, exception, failed job
run, traceback in a service log), RSS at 1 minute and at the end, P50/P99 of ``/predict`` in the
first and last minute, requests/s, the version served before and after the swap, and PASS/FAIL
against: no error, RSS at the end <= 1.15 x RSS at 1 minute for every service, P99 of the last
minute <= 1.5 x that of the first. Samples go to ``--out`` (JSON) and a plot beside it (PNG).
Everything started is stopped at the end (process groups), also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import itertools
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

console = Console(width=None if sys.stdout.isatty() else 132)
SERVICES = ("label-studio", "ml-backend", "scheduler")
RSS_LIMIT, P99_LIMIT = 1.15, 1.5
PULL_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
OTHER_ACTIONS = ("PROJECT_UPDATED", "TASKS_CREATED")


# -- what the run records ----------------------------------------------------------------------

@dataclass
class Record:
    t0: float = 0.0  # monotonic start of the load
    # /predict: start time (s since t0), latency (ms), answered 2xx, model version in the answer
    req_t: list[float] = field(default_factory=list)
    req_ms: list[float] = field(default_factory=list)
    req_ok: list[bool] = field(default_factory=list)
    req_version: list[str | None] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    rss: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"annotations": 0, "webhooks": 0})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def error(self, where: str, detail: str) -> None:
        with self.lock:
            self.errors.append({"t": round(self.now(), 2), "where": where, "detail": detail[:500]})

    def event(self, what: str, **kw: Any) -> None:
        with self.lock:
            self.events.append({"t": round(self.now(), 2), "event": what, **kw})
        console.print(f"[dim]{self.now():7.1f} s[/dim]  {what} {kw if kw else ''}")


# -- the stack ---------------------------------------------------------------------------------

def _prepare(var: Path) -> dict[str, str]:
    """Credentials of the throwaway Label Studio user and a copy of its migrated template as the
    stack's Label Studio data dir, so ``up`` starts Label Studio in seconds."""
    from hitl.local.label_studio_server import template_dir, throwaway_credentials

    creds = throwaway_credentials()
    var.mkdir(parents=True, exist_ok=True)
    path = var / "credentials.json"
    path.write_text(json.dumps({**creds, "argilla_key": secrets.token_urlsafe(24)}))
    path.chmod(0o600)
    shutil.copytree(template_dir(**creds), var / "label-studio", ignore=shutil.ignore_patterns("*.log"))
    return creds


def _pid(var: Path, name: str) -> int | None:
    try:
        return int((var / "run" / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _rss_by_group(pgids: dict[str, int]) -> dict[str, int]:
    """Resident bytes of every live process in each process group, from one pass over /proc."""
    wanted = {pgid: name for name, pgid in pgids.items()}
    out = dict.fromkeys(pgids, 0)
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as fh:
                pgrp = int(fh.read().rsplit(")", 1)[1].split()[2])
            if pgrp not in wanted:
                continue
            with open(stat[:-4] + "status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        out[wanted[pgrp]] += int(line.split()[1]) * 1024
                        break
        except (OSError, IndexError, ValueError):
            continue
    return out


def _stop_services(pgids: dict[str, int], timeout: float = 15.0) -> None:
    """SIGTERM each service's process group and reap its leader: ``up`` started them from this
    process, so a stopped one stays a zombie that ``stack.down`` (which waits for the pid to vanish)
    would wait 15 s for and then SIGKILL. SIGKILL the group after ``timeout``."""
    for name in ("scheduler", "ml-backend", "label-studio"):  # the order of ``hitl down``
        pid = pgids.get(name)
        if pid is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            except ChildProcessError:  # not a child of this process (or reaped): gone when kill(0) fails
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                break
            time.sleep(0.1)
        console.print(f"stopped {name} (pid {pid})")


def _own_rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


# -- load: /predict from closed loops ----------------------------------------------------------

def _predict_load(rec: Record, url: str, texts: list[str], config: str, project: int, clients: int,
                  deadline: float, think_s: float, stop: threading.Event) -> None:
    """``clients`` connections, each sending one task per request and waiting for its answer, until
    ``deadline`` (monotonic); a lean asyncio client, so the generator takes little of the CPU."""
    host, port = url.split("//")[1].split(":")
    port_n = int(port)

    def request(text: str, task_id: int) -> bytes:
        body = json.dumps({"tasks": [{"id": task_id, "data": {"text": text}}], "label_config": config,
                           "project": f"{project}.{int(time.time())}"}).encode()
        return (f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    async def one(k: int) -> None:
        i = k * 7919
        while time.monotonic() < deadline and not stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port_n), 10)
            except (OSError, TimeoutError) as exc:
                rec.error("predict", f"client {k}: connect: {exc!r}")
                await asyncio.sleep(0.5)
                continue
            try:
                while time.monotonic() < deadline and not stop.is_set():
                    i += 1
                    body = request(texts[i % len(texts)], 100_000 * k + i)
                    start = time.monotonic()
                    writer.write(body)
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                    lines = head.split(b"\r\n")
                    length = next((int(x.split(b":", 1)[1]) for x in lines if x.lower().startswith(b"content-length:")),
                                  None)
                    if length is None:
                        raise RuntimeError(f"no Content-Length in {lines[0]!r}")
                    payload = await asyncio.wait_for(reader.readexactly(length), 30)
                    ms = (time.monotonic() - start) * 1000
                    ok = lines[0].split(b" ")[1].startswith(b"2")
                    version = None
                    if ok:
                        try:
                            answer = json.loads(payload)
                            version = answer["results"][0]["model_version"]
                        except (ValueError, KeyError, IndexError, TypeError) as exc:
                            ok = False
                            rec.error("predict", f"client {k}: unexpected answer {payload[:200]!r} ({exc!r})")
                    else:
                        rec.error("predict", f"client {k}: {lines[0].decode(errors='replace')} {payload[:200]!r}")
                    rec.req_t.append(start - rec.t0)
                    rec.req_ms.append(ms)
                    rec.req_ok.append(ok)
                    rec.req_version.append(version)
                    if think_s:
                        await asyncio.sleep(think_s)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, RuntimeError,
                    ValueError) as exc:
                rec.error("predict", f"client {k}: {exc!r}")
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def go() -> None:
        await asyncio.gather(*(one(k) for k in range(clients)))

    asyncio.run(go())


# -- the annotator and the webhook sender ------------------------------------------------------

@dataclass
class Annotator:
    rec: Record
    ls_url: str
    token: str
    project: int
    label_config: str
    truth: dict[str, str]
    every_s: float
    stop: threading.Event
    last: tuple[int, int] | None = None  # (annotation id, task id) of the newest annotation

    def run(self) -> None:
        from connector.labeling_config import parse_labeling_config
        from connector.tools.label_studio import LabelStudioTool

        tool = LabelStudioTool(self.ls_url, self.token)
        control = parse_labeling_config(self.label_config)[0]
        done: set[str] = set()
        queue: list[tuple[str, str]] = []
        last_refresh = 0.0
        rng = random.Random(0)
        while not self.stop.is_set():
            try:
                if not queue and time.monotonic() - last_refresh > 5:
                    last_refresh = time.monotonic()
                    found = tool.find(str(self.project))
                    queue = sorted((ext, tid) for ext, tid in found.items() if tid not in done)
                    rng.shuffle(queue)
                if queue:
                    ext, tid = queue.pop()
                    label = self.truth.get(ext) or rng.choice(control.labels)
                    aid = tool.annotate(tid, [control.result([label])])
                    done.add(tid)
                    self.last = (aid, int(tid))
                    with self.rec.lock:
                        self.rec.counts["annotations"] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is a soak error
                self.rec.error("annotator", repr(exc))
            self.stop.wait(self.every_s)


def _webhook_secret(var: Path, fallback: str) -> str:
    """The secret the scheduler's receiver checks: ``hitl up`` keeps its own in the credentials file."""
    creds = json.loads((var / "credentials.json").read_text())
    return creds.get("webhook_secret") or fallback


def _webhooks(rec: Record, sync_url: str, backend_url: str, secret: str, project: int, every_s: float,
              annotator: Annotator, stop: threading.Event) -> None:
    """Label Studio-style events to the scheduler's receiver (authorized by the shared secret) and
    to the backend's ``/webhook``; every 10th scheduler delivery goes without the secret: 401."""
    actions = itertools.cycle(PULL_ACTIONS[:1] + OTHER_ACTIONS[:1] + PULL_ACTIONS[1:2] + OTHER_ACTIONS[1:])
    with httpx.Client(timeout=10) as http:
        for n in itertools.count(1):
            if stop.wait(every_s):
                return
            action = next(actions)
            aid, tid = annotator.last or (0, 0)
            payload = {"action": action, "project": {"id": project, "title": "soak"},
                       "annotation": {"id": aid, "task": tid, "result": []}, "task": {"id": tid, "data": {}}}
            unauthorized = n % 10 == 0
            try:
                r = http.post(f"{sync_url}/webhooks/label-studio", json=payload,
                              headers={} if unauthorized else {"X-Hitl-Secret": secret})
                if unauthorized:
                    if r.status_code != 401:
                        rec.error("webhook", f"no secret: {r.status_code} (expected 401)")
                elif r.status_code != 200 or r.json().get("pull_queued") != (action in PULL_ACTIONS):
                    rec.error("webhook", f"{action}: {r.status_code} {r.text[:200]}")
                r = http.post(f"{backend_url}/webhook", json=payload)  # answered, and honestly ignored
                if r.status_code != 200 or r.json().get("status") != "ignored":
                    rec.error("webhook", f"backend {action}: {r.status_code} {r.text[:200]}")
                with rec.lock:
                    rec.counts["webhooks"] += 1
            except httpx.HTTPError as exc:
                rec.error("webhook", repr(exc))


# -- the retraining and the hot swap -----------------------------------------------------------

def _retrain_and_swap(rec: Record, var: Path, env: dict[str, str], backend_url: str, procs: dict[str, Any],
                      stop: threading.Event) -> None:
    from connector.model_store import ModelStore

    models = ModelStore(var / "models")
    before = models.current()
    rec.event("retrain started", serving=before)
    out = var / "log-retrain.txt"
    with open(out, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "hitl.cli", "scheduler", "once", "retrain"], env=env,
                                cwd=var, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    procs["retrain"] = proc
    try:
        rc = proc.wait(600)
    except subprocess.TimeoutExpired:
        rec.error("retrain", "retrain did not finish within 600 s")
        return
    text = out.read_text(errors="replace")
    if rc != 0:
        rec.error("retrain", f"`hitl scheduler once retrain` exited {rc}: {text[-500:]}")
        return
    newest = max(models.versions(), key=lambda v: models.meta(v).created_at)
    promoted = models.current() != before
    rec.event("retrain finished", candidate=newest, promoted=promoted,
              job=" ".join(text.rsplit("retrain:", 1)[-1].split())[:400])
    if not promoted:
        if newest == before:
            rec.error("retrain", "no new version was saved")
            return
        r = subprocess.run([sys.executable, "-m", "hitl.cli", "promote", newest], check=False, env=env,
                           cwd=var, capture_output=True, text=True)
        if r.returncode != 0:
            rec.error("retrain", f"`hitl promote {newest}` exited {r.returncode}: {r.stderr[-300:]}")
            return
        rec.event("promoted by hand (the candidate was not better on held-out labels)", version=newest)
    target = models.current()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not stop.is_set():
        try:
            serving = httpx.get(f"{backend_url}/health", timeout=5).json().get("model_version")
        except (httpx.HTTPError, ValueError) as exc:
            rec.error("retrain", f"backend /health: {exc!r}")
            serving = None
        if serving == target:
            rec.event("hot swap: the backend serves the new version", version=target, previous=before)
            return
        time.sleep(0.5)
    if not stop.is_set():
        rec.error("retrain", f"the backend did not switch to {target} within 120 s")


# -- figures -----------------------------------------------------------------------------------

def _pct(ms: np.ndarray, q: float) -> float:
    return float(np.percentile(ms, q)) if len(ms) else float("nan")


def _window(rec: Record, lo: float, hi: float) -> dict[str, float]:
    t, ms = np.array(rec.req_t), np.array(rec.req_ms)
    sel = ms[(t >= lo) & (t < hi)] if len(t) else ms
    return {"from_s": lo, "to_s": hi, "requests": len(sel), "p50_ms": _pct(sel, 50), "p99_ms": _pct(sel, 99),
            "max_ms": float(sel.max()) if len(sel) else float("nan"), "per_s": len(sel) / max(hi - lo, 1e-9)}


LOG_ERROR = re.compile(r"\bERROR\b|Traceback|Internal Server Error")
# Label Studio logs every error record with its traceback; it logs as an ERROR the 404 it answers
# for a page past the last, which the SDK's pager asks for when a project is looked up by title
LS_BENIGN = re.compile(r"\[ERROR\] \S+ Invalid page\.$")


def _log_errors(var: Path) -> dict[str, list[str]]:
    """Tracebacks and error lines in the services' logs (Label Studio's: its error records)."""
    found: dict[str, list[str]] = {}
    for name in ("ml-backend", "scheduler", "label-studio"):
        path = var / f"log-{name}.txt"
        if not path.exists():
            continue
        lines = path.read_text(errors="replace").splitlines()
        if name == "label-studio":
            bad = [x for x in lines if ("[ERROR]" in x and not LS_BENIGN.search(x)) or "Internal Server Error" in x]
        else:
            bad = [x for x in lines if LOG_ERROR.search(x)]
        if bad:
            found[name] = bad[:20]
    return found


def _job_runs(db: Path, since: datetime) -> dict[str, Any]:
    from connector.store import StateStore

    with StateStore(f"sqlite:///{db}") as store:
        runs = [r for r in store.job_runs.list() if r.started_at.replace(tzinfo=UTC) >= since]
        labels = len(store.annotations.list())
    out: dict[str, Any] = {"annotations_in_store": labels, "runs": {}, "failed": []}
    for r in runs:
        key = f"{r.job_id} {r.status}"
        out["runs"][key] = out["runs"].get(key, 0) + 1
        if r.status == "failed":
            out["failed"].append(f"{r.job_id} {r.slot}: {r.error}")
    return out


def _plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    ts = [s["t"] for s in data["rss_samples"]]
    for name in SERVICES:
        a.plot(ts, [s["rss"][name] / 2**20 for s in data["rss_samples"]], label=name)
    a.set_ylabel("RSS (MiB)")
    a.legend()
    series = data["latency_series"]
    b.plot([s["to_s"] for s in series], [s["p99_ms"] for s in series], label="P99")
    b.plot([s["to_s"] for s in series], [s["p50_ms"] for s in series], label="P50")
    b.set_ylabel("/predict latency (ms), 10 s windows")
    b.set_xlabel("seconds since the load started")
    for e in data["events"]:
        if e["event"].startswith(("retrain started", "hot swap")):
            for ax in (a, b):
                ax.axvline(e["t"], color="grey", linestyle="--", linewidth=0.8)
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the run -----------------------------------------------------------------------------------

def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--think-ms", type=float, default=0.0, help="pause of each client between requests")
    ap.add_argument("--sync-interval", type=float, default=10.0, help="the scheduler's sync interval (s)")
    ap.add_argument("--annotate-every", type=float, default=3.0, help="seconds between the annotator's answers")
    ap.add_argument("--webhook-every", type=float, default=5.0, help="seconds between webhook events")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "soak.json")
    ap.add_argument("--keep", action="store_true", help="keep the temporary var dir (kept anyway on FAIL)")
    args = ap.parse_args()
    if args.minutes < 2:
        ap.error("--minutes must be at least 2 (a first and a last minute)")

    from connector.datasets import rotten_tomatoes
    from connector.task_spec import TaskSpec
    from hitl.local import stack
    from hitl.local.processes import free_port, stop_process_group

    var = Path(tempfile.mkdtemp(prefix="hitl-soak-"))
    secret = secrets.token_urlsafe(16)
    # the services are started from this environment: this checkout's code (also from cwd=var), the
    # scheduler's webhook secret, and its own retraining moved half a year ahead (see the docstring)
    far = datetime.now(UTC) + timedelta(days=183)
    os.environ.update(PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
                      HITL_WEBHOOK_SECRET=secret, HITL_RETRAIN_CRON=f"{far.minute} {far.hour} {far.day} {far.month} *",
                      HF_HUB_OFFLINE="1")
    settings = stack.StackSettings(_env_file=None, var_dir=var, tool="label_studio", ls_port=free_port(),
                                   backend_port=free_port(), sync_port=free_port(), sync_interval_s=args.sync_interval,
                                   min_new_labels=1)
    rec = Record()
    stop = threading.Event()
    procs: dict[str, Any] = {}
    threads: list[threading.Thread] = []
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    pgids: dict[str, int] = {}
    finished = False
    try:
        console.rule(f"soak: {args.minutes:g} min, {args.clients} clients, var dir {var}")
        creds = _prepare(var)
        t_up = time.monotonic()
        stack.up(settings)
        console.print(f"stack up in {time.monotonic() - t_up:.0f} s")
        ls_url = f"http://127.0.0.1:{settings.ls_port}"
        backend_url = f"http://127.0.0.1:{settings.backend_port}"
        sync_url = f"http://127.0.0.1:{settings.sync_port}"
        task, db = var / "task.toml", var / "state.db"
        spec = TaskSpec.load(task)
        scheduler_env = stack._scheduler_env(settings, stack._credentials(var), task, db, backend_url)
        from connector.tools.label_studio import LabelStudioTool

        project = LabelStudioTool(ls_url, creds["token"]).project_id(spec.project_name, spec.label_config())
        ds = rotten_tomatoes()
        truth = {f"rt-{i}": label for i, label in enumerate(ds.labels)}
        texts = rotten_tomatoes(full=True).texts
        pgids.update({name: pid for name in SERVICES if (pid := _pid(var, name)) is not None})
        missing = set(SERVICES) - set(pgids)
        if missing:
            raise RuntimeError(f"no pid file for {sorted(missing)}")
        started_at = datetime.now(UTC)
        duration = args.minutes * 60
        rec.t0 = time.monotonic()
        deadline = rec.t0 + duration
        annotator = Annotator(rec, ls_url, creds["token"], project, spec.label_config(), truth,
                              args.annotate_every, stop)
        threads = [
            threading.Thread(target=_predict_load, name="load", daemon=True,
                             args=(rec, backend_url, texts, spec.label_config(), project, args.clients, deadline,
                                   args.think_ms / 1000, stop)),
            threading.Thread(target=annotator.run, name="annotator", daemon=True),
            threading.Thread(target=_webhooks, name="webhooks", daemon=True,
                             args=(rec, sync_url, backend_url, _webhook_secret(var, secret), project, args.webhook_every, annotator, stop)),
        ]
        for th in threads:
            th.start()
        rec.event("load started", clients=args.clients, project=project)
        retrain = threading.Thread(target=_retrain_and_swap, name="retrain", daemon=True,
                                   args=(rec, var, scheduler_env, backend_url, procs, stop))

        def sample() -> None:
            groups = dict(pgids)
            if (p := procs.get("retrain")) is not None and p.poll() is None:
                groups["retrain"] = p.pid
            rss = _rss_by_group(groups)
            rss.setdefault("retrain", 0)
            rss["soak"] = _own_rss()
            with rec.lock:
                rec.rss.append({"t": round(rec.now(), 2), "rss": rss})
            dead = [name for name in SERVICES if rss[name] == 0]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} stopped during the soak; logs under {var}")

        next_sample = next_print = 0.0
        while (now := rec.now()) < duration:
            if now >= duration / 2 and not retrain.is_alive() and retrain.ident is None:
                retrain.start()
            if now >= next_sample:
                sample()
                next_sample += 5
            if now >= next_print:
                w = _window(rec, max(0.0, now - 30), now)
                console.print(f"[dim]{now:7.1f} s[/dim]  {w['per_s']:5.0f} req/s  p50 {w['p50_ms']:6.1f} ms  "
                              f"p99 {w['p99_ms']:6.1f} ms  | " + "  ".join(
                                  f"{n} {rec.rss[-1]['rss'][n] / 2**20:.0f} MiB" for n in SERVICES)
                              + f"  | annotations {rec.counts['annotations']}  webhooks {rec.counts['webhooks']}"
                              f"  errors {len(rec.errors)}")
                next_print += 30
            time.sleep(min(0.5, max(0.0, duration - now)))
        sample()
        stop.set()
        for th in threads:
            th.join(60)
        if retrain.is_alive():
            retrain.join(1)
            rec.error("retrain", "the retraining or the swap had not finished when the load ended")
        if retrain.ident is None:
            rec.error("retrain", "the retraining never started")
        rec.event("load finished")
        finished = True
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping the stack[/yellow]")
        stop.set()
        return 130
    finally:
        stop.set()
        # stopping takes seconds: a second Ctrl-C or SIGTERM must not leave the services running
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if (p := procs.get("retrain")) is not None:
            stop_process_group(p)
        for th in threads:
            th.join(5)
        started = {**pgids, **{name: pid for name in SERVICES if (pid := _pid(var, name))}}
        _stop_services(started)
        stack.down(settings)  # removes the pid files; stops whatever is still running
        leftovers = {name: n for name, n in _rss_by_group(started).items() if n}
        if leftovers:
            console.print(f"[red]still running after `down` (RSS by process group): {leftovers}[/red]")
        if not finished:
            console.print(f"logs kept under {var}")
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)

    # -- report (after the stack stopped) -------------------------------------------------------
    jobs = _job_runs(db, started_at)
    for failure in jobs["failed"]:
        rec.error("job run", failure)
    log_errors = _log_errors(var)
    for name, lines in log_errors.items():
        for line in lines:
            rec.error(f"log {name}", line)

    first, last = _window(rec, 0, 60), _window(rec, duration - 60, duration)
    total = _window(rec, 0, duration)
    series = [_window(rec, lo, lo + 10) for lo in np.arange(0, duration, 10.0)]
    at_1min = min(rec.rss, key=lambda s: abs(s["t"] - 60))
    end = rec.rss[-1]
    versions: dict[str, int] = {}
    first_seen: dict[str, float] = {}
    for t, v in zip(rec.req_t, rec.req_version):
        if v is not None:
            versions[v] = versions.get(v, 0) + 1
            first_seen.setdefault(v, t)
    swap = next((e for e in rec.events if e["event"].startswith("hot swap")), None)
    retrain_at = next((e["t"] for e in rec.events if e["event"] == "retrain started"), duration / 2)
    # from the retraining's start to 30 s after the swap (the next sync re-scores the items with the new model)
    around = _window(rec, retrain_at, (swap["t"] if swap else retrain_at) + 30)
    around["errors"] = sum(1 for e in rec.errors if around["from_s"] <= e["t"] < around["to_s"])
    retrain_peak = max((s["rss"].get("retrain", 0) for s in rec.rss), default=0)

    table = Table(title=f"Soak {args.minutes:g} min: {args.clients} clients on /predict, webhooks every "
                        f"{args.webhook_every:g} s, sync every {args.sync_interval:g} s, retrain + hot swap mid-run")
    for col in ("measure", "first minute / at 1 min", "last minute / at end", "ratio", "limit", ""):
        table.add_column(col, justify="right" if col not in ("measure", "") else "left")
    checks: list[bool] = []

    def verdict(ok: bool) -> str:
        checks.append(ok)
        return "[green]PASS[/green]" if ok else "[red]FAIL[/red]"

    p99_ratio = last["p99_ms"] / first["p99_ms"]
    table.add_row("/predict P50", f"{first['p50_ms']:.1f} ms", f"{last['p50_ms']:.1f} ms",
                  f"{last['p50_ms'] / first['p50_ms']:.2f}", "", "")
    table.add_row("/predict P99", f"{first['p99_ms']:.1f} ms", f"{last['p99_ms']:.1f} ms", f"{p99_ratio:.2f}",
                  f"<= {P99_LIMIT}", verdict(p99_ratio <= P99_LIMIT))
    table.add_row("/predict requests/s", f"{first['per_s']:.1f}", f"{last['per_s']:.1f}", "", "", "")
    rss_ratios = {}
    for name in SERVICES:
        ratio = rss_ratios[name] = end["rss"][name] / at_1min["rss"][name]
        table.add_row(f"RSS {name}", f"{at_1min['rss'][name] / 2**20:.0f} MiB", f"{end['rss'][name] / 2**20:.0f} MiB",
                      f"{ratio:.3f}", f"<= {RSS_LIMIT}", verdict(ratio <= RSS_LIMIT))
    table.add_row("errors", "", str(len(rec.errors)), "", "0", verdict(not rec.errors))
    table.add_row("hot swap", "", f"{swap['previous']} -> {swap['version']}" if swap else "none", "", "",
                  verdict(swap is not None))
    console.print(table)
    console.print(f"{total['requests']} /predict requests ({total['per_s']:.1f}/s), P50 {total['p50_ms']:.1f} ms, "
                  f"P99 {total['p99_ms']:.1f} ms, max {total['max_ms']:.1f} ms; answered by version: "
                  + ", ".join(f"{v} {n} (first at {first_seen[v]:.1f} s)" for v, n in versions.items()))
    console.print(f"retraining and swap ({around['from_s']:.0f}-{around['to_s']:.0f} s): "
                  f"{around['requests']} requests, "
                  f"{around['errors']} errors, P50 {around['p50_ms']:.1f} ms, P99 {around['p99_ms']:.1f} ms, "
                  f"max {around['max_ms']:.1f} ms")
    console.print(f"annotations {rec.counts['annotations']} (in the store: {jobs['annotations_in_store']}), "
                  f"webhook events {rec.counts['webhooks']}, job runs {jobs['runs']}, "
                  f"retrain process peak RSS {retrain_peak / 2**20:.0f} MiB")
    for e in rec.errors[:20]:
        console.print(f"[red]error[/red] {e['t']:7.1f} s {e['where']}: {e['detail']}")
    passed = all(checks)
    console.print("[bold green]PASS[/bold green]" if passed else "[bold red]FAIL[/bold red]")

    data = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "started_at": started_at.isoformat(), "pass": passed, "first_minute": first, "last_minute": last,
            "total": total, "retrain_and_swap": around, "p99_ratio": p99_ratio, "rss_at_1min": at_1min,
            "rss_end": end, "rss_ratio": rss_ratios,
            "retrain_peak_rss": retrain_peak, "versions": versions, "version_first_seen_s": first_seen,
            "errors": rec.errors, "events": rec.events, "counts": rec.counts, "job_runs": jobs,
            "latency_series": series, "rss_samples": rec.rss}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1))
    _plot(data, args.out.with_suffix(".png"))
    console.print(f"samples: {args.out}; plot: {args.out.with_suffix('.png')}")
    if passed and not args.keep:
        shutil.rmtree(var, ignore_errors=True)
    else:
        console.print(f"var dir kept: {var}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
