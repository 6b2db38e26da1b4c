"""``hitl up`` / ``hitl down``: the whole loop on this machine with embedded defaults.

Under ``var/``: the task file, the state store (SQLite), model versions, credentials (0600) and pid
files. ``up`` ingests 500 Rotten Tomatoes snippets (labels hidden from the loop) and 60 seed labels,
trains the first model with the scheduler's own retraining, starts the annotation tool (Label
Studio on SQLite, or with ``HITL_TOOL=argilla`` a local argilla-server), the ML backend and the
scheduler (sync, metrics, retraining) as detached processes, routes and pushes the first batch,
and registers the backend on the Label Studio project (the sync registers the project's webhook
to the scheduler's receiver, so an answer is pulled at once). Running ``up`` again resumes the
same state; ``down`` stops every process it started.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.panel import Panel

from hitl.local import label_studio_server
from hitl.local.processes import http_ok, is_healthy, wait_for_health

console = Console()

DEMO_TITLE = "hitl demo: Rotten Tomatoes"
ARGILLA_PARTS = ("argilla-server", "argilla-worker", "argilla-osmem", "argilla-redis")
ARGILLA_USER = "argilla"


class StackSettings(BaseSettings):
    """Where the local stack keeps its state, and its ports (``HITL_*`` env overrides)."""

    model_config = SettingsConfigDict(env_prefix="HITL_", env_file=".env", extra="ignore")

    var_dir: Path = Path("var")
    tool: Literal["label_studio", "argilla"] = "label_studio"
    ls_port: int = 8080
    argilla_port: int = 6900
    backend_port: int = 9090
    sync_port: int = 9091
    demo_tasks: int = 500
    seed_labels: int = 60
    batch: int = 40
    min_new_labels: int = 20
    sync_interval_s: float = 10.0
    metrics_interval_s: float = 60.0
    retrain_interval_s: float = 30.0


@dataclass
class Credentials:
    username: str
    password: str
    token: str
    argilla_key: str = ""
    webhook_secret: str = ""  # X-Hitl-Secret of the Label Studio webhook to the scheduler's receiver


def _credentials(var: Path) -> Credentials:
    """Generated on the first ``up`` and kept (mode 0600) so later runs log in as the same user
    (a file from an older ``up`` gets the keys it lacks)."""
    path = var / "credentials.json"
    if path.exists():
        creds = Credentials(**json.loads(path.read_text()))
        if creds.argilla_key and creds.webhook_secret:
            return creds
        creds.argilla_key = creds.argilla_key or secrets.token_urlsafe(24)
        creds.webhook_secret = creds.webhook_secret or secrets.token_urlsafe(24)
    else:
        creds = Credentials("admin@example.com", secrets.token_urlsafe(12), secrets.token_hex(20),
                            secrets.token_urlsafe(24), secrets.token_urlsafe(24))
    var.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(creds.__dict__))
    path.chmod(0o600)
    return creds


def _alive(pid_file: Path) -> int | None:
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().strip() or 0)
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return None
    return pid


def _ensure_label_studio(s: StackSettings, creds: Credentials) -> str:
    run = s.var_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{s.ls_port}"
    if _alive(run / "label-studio.pid") and is_healthy(url, timeout=2):
        return url
    console.print(f"starting Label Studio on {url} (first start migrates its database: about a minute)")
    server = label_studio_server.start(s.var_dir / "label-studio", port=s.ls_port, username=creds.username,
                                       password=creds.password, token=creds.token, timeout=300,
                                       log_path=s.var_dir / "log-label-studio.txt")
    (run / "label-studio.pid").write_text(str(server.process.pid))
    return url


def _ensure_argilla(s: StackSettings, creds: Credentials) -> str:
    """A local argilla-server (its own venv; Redis from Debian; an in-memory search emulator whose
    index is rebuilt from Argilla's database on a restart), detached, with one pid file per part."""
    from hitl.local import argilla_stack

    run = s.var_dir / "run"
    url = f"http://127.0.0.1:{s.argilla_port}"
    if _alive(run / "argilla-server.pid") and http_ok(f"{url}/api/_status", timeout=2):
        return url
    down_parts(s, ARGILLA_PARTS)
    console.print(f"starting argilla-server on {url}")
    stack = argilla_stack.start(s.var_dir / "argilla", api_key=creds.argilla_key, password=creds.password,
                                 port=s.argilla_port, detached=True, timeout=300)
    names = {"argilla": "argilla-server", "worker": "argilla-worker", "osmem": "argilla-osmem", "redis": "argilla-redis"}
    for part, proc in stack.processes.items():
        (run / f"{names[part]}.pid").write_text(str(proc.pid))
    return url


def _ensure_backend(s: StackSettings) -> str:
    run = s.var_dir / "run"
    url = f"http://127.0.0.1:{s.backend_port}"
    if _alive(run / "ml-backend.pid") and is_healthy(url, timeout=2):
        return url
    log = s.var_dir / "log-ml-backend.txt"
    env = {**os.environ, "HITL_MODEL_ROOT": str((s.var_dir / "models").resolve()), "HITL_PORT": str(s.backend_port),
           "HITL_HOST": "127.0.0.1", "HF_HUB_OFFLINE": "1"}
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "ml_backend"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    (run / "ml-backend.pid").write_text(str(proc.pid))
    console.print(f"starting the ML backend on {url}")
    wait_for_health(url, proc, timeout=120, log_path=log, name="ML backend")
    return url


TASK_TOML = """# the demo task `hitl up` runs (edit and `make up` again; see README for every key)
name = "{title}"
tool = "{tool}"
text_field = "text"
labels = ["fresh", "rotten"]
instructions = "Is this review fresh or rotten?"
overlap = 1

[label_studio]
url = "http://127.0.0.1:{ls_port}"
api_key_env = "HITL_LS_API_KEY"

[argilla]
url = "http://127.0.0.1:{argilla_port}"
api_key_env = "HITL_ARGILLA_API_KEY"

[routing]
accept_threshold = 0.9
spot_check_rate = 0.05
audit_share = 0.2
review_budget = {batch}       # a batch per model version: the next one comes after a retraining
strategy = "least_confidence"

[retraining]
min_new_labels = {min_new_labels}

[thresholds]
target_error = 0.05
review_band = [0.0, 0.5]
"""


def _ensure_state(s: StackSettings) -> tuple[Path, Path]:
    """The task file, the state store with the demo items (labels hidden) and the seed labels, and
    a first model trained by the same retraining the scheduler runs."""
    import numpy as np

    from connector.classifier import stratified_split
    from connector.datasets import rotten_tomatoes
    from connector.model_store import ModelStore
    from connector.store import StateStore
    from connector.task_spec import TaskSpec
    from sync.jobs import JobContext, retrain_job

    task = s.var_dir / "task.toml"
    if not task.exists():
        task.write_text(TASK_TOML.format(title=DEMO_TITLE, tool=s.tool, ls_port=s.ls_port, argilla_port=s.argilla_port,
                                         batch=s.batch, min_new_labels=s.min_new_labels))
    spec = TaskSpec.load(task)
    if spec.tool != s.tool:
        raise SystemExit(f"{task} says tool = {spec.tool!r} but TOOL={s.tool}: `make down`, remove {s.var_dir}, "
                         "and `make up` again to switch tools")
    db = s.var_dir / "state.db"
    with StateStore(f"sqlite:///{db}") as store:
        store.migrate()
        ds = rotten_tomatoes()
        labels = np.array(ds.labels)
        rest, seed = stratified_split(labels, s.seed_labels / len(labels), seed=2)
        _, demo = stratified_split(labels[rest], s.demo_tasks / len(rest), seed=1)
        demo = rest[demo]
        # the demo items' labels stay out of the store: the loop must find them through annotators
        store.items.ingest([{"id": f"rt-{i}", "text": ds.texts[i]} for i in demo])
        store.items.ingest([{"id": f"seed-{i}", "text": ds.texts[i]} for i in seed])
        ids = {it.external_id: it.id for it in store.items.list()}
        if not store.labels.list():
            store.labels.save([{"item_id": ids[f"seed-{i}"], "label": ds.labels[i], "status": "settled",
                                "method": "seed", "n_answers": 0, "reason": "seed label from the data set"}
                               for i in seed])
        models = ModelStore(s.var_dir / "models")
        if models.current() is None:
            console.print(f"training the first model on {len(seed)} seed labels")
            retrain_job(JobContext(store, spec, models), force=True)
    return task, db


def _scheduler_env(s: StackSettings, creds: Credentials, task: Path, db: Path, backend_url: str) -> dict[str, str]:
    return {**os.environ, "HITL_DB_URL": f"sqlite:///{db}", "HITL_TASK": str(task),
            "HITL_MODEL_ROOT": str(s.var_dir / "models"), "HITL_BACKEND_URL": backend_url,
            "HITL_LS_API_KEY": creds.token, "HITL_ARGILLA_API_KEY": creds.argilla_key,
            "HITL_SYNC_PORT": str(s.sync_port), "HITL_SYNC_HOST": "127.0.0.1",
            # Label Studio's webhook to the scheduler's receiver: an answer is pulled at once, not at the next sync
            "HITL_SYNC_PUBLIC_URL": f"http://127.0.0.1:{s.sync_port}", "HITL_WEBHOOK_SECRET": creds.webhook_secret,
            "HITL_SYNC_INTERVAL_S": str(s.sync_interval_s), "HITL_METRICS_INTERVAL_S": str(s.metrics_interval_s),
            "HITL_RETRAIN_INTERVAL_S": str(s.retrain_interval_s), "HF_HUB_OFFLINE": "1"}


def _first_sync(env: dict[str, str], backend_url: str, ls_url: str | None) -> dict:
    """Route and push the first batch now (the scheduler would within one interval), and register
    the ML backend on the Label Studio project so annotators can also ask it for predictions."""
    from sync.runner import build_context, build_scheduler, open_store
    from sync.settings import SyncSettings

    settings = SyncSettings(_env_file=None, **{k[5:].lower(): v for k, v in env.items()
                                               if k.startswith("HITL_") and k[5:].lower() in SyncSettings.model_fields})
    old = {k: os.environ.get(k) for k in ("HITL_LS_API_KEY", "HITL_ARGILLA_API_KEY")}
    os.environ.update({k: env[k] for k in old})
    try:
        with open_store(settings) as store:
            ctx = build_context(settings, store)
            scheduler = build_scheduler(settings, store, ctx)
            outcome = scheduler.execute("sync", slot=f"hitl up {time.time():.0f}")
            run = store.job_runs.list("sync", limit=1)[0]
            if outcome == "failed":
                raise SystemExit(f"the first sync failed: {run.error}")
            if ls_url is not None:
                ls, project_id = ctx.sync.tool._ls, int(ctx.sync.project)
                if not ls.ml.list(project=project_id):
                    ls.ml.create(project=project_id, url=backend_url, title="hitl ML backend", is_interactive=False)
                run.detail["project_id"] = project_id
            return run.detail
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _ensure_scheduler(s: StackSettings, env: dict[str, str]) -> None:
    run = s.var_dir / "run"
    if _alive(run / "scheduler.pid"):
        return
    log = s.var_dir / "log-scheduler.txt"
    proc = subprocess.Popen([sys.executable, "-m", "hitl.cli", "scheduler", "run"], env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,  # noqa: SIM115
                            cwd=s.var_dir)
    (run / "scheduler.pid").write_text(str(proc.pid))
    url = f"http://127.0.0.1:{s.sync_port}"
    console.print(f"starting the scheduler (sync every {s.sync_interval_s:.0f} s, webhooks and /metrics on {url})")
    wait_for_health(url, proc, timeout=60, log_path=log, name="scheduler")


def up(s: StackSettings | None = None) -> None:
    s = s or StackSettings()
    s.var_dir = s.var_dir.resolve()
    s.var_dir.mkdir(parents=True, exist_ok=True)
    (s.var_dir / "run").mkdir(exist_ok=True)
    creds = _credentials(s.var_dir)
    task, db = _ensure_state(s)
    if s.tool == "argilla":
        tool_url = _ensure_argilla(s, creds)
        ls_url = None
    else:
        tool_url = ls_url = _ensure_label_studio(s, creds)
    backend_url = _ensure_backend(s)
    env = _scheduler_env(s, creds, task, db, backend_url)
    if _alive(s.var_dir / "run" / "scheduler.pid"):
        first = {}
    else:
        first = _first_sync(env, backend_url, ls_url)
        _ensure_scheduler(s, env)
    pushed = (first.get("push") or {}).get("pushed", 0)
    if s.tool == "argilla":
        where = f"Argilla       [bold]{tool_url}[/bold]  (dataset \"{DEMO_TITLE}\")\n" \
                f"login         {ARGILLA_USER} / {creds.password}\n"
    else:
        project = first.get("project_id")
        where = (f"Label Studio  [bold]{tool_url}" + (f"/projects/{project}/data" if project else "") + "[/bold]\n"
                 f"login         {creds.username} / {creds.password}\n")
    console.print(Panel.fit(
        where +
        f"ML backend    {backend_url}  (/predict for Label Studio, /v1/predict)\n"
        f"scheduler     http://127.0.0.1:{s.sync_port}/metrics   state {db}\n"
        + (f"first batch   {pushed} uncertain snippets pushed\n" if pushed else "resumed: the same project and state\n")
        + "\nLabel the snippets, least certain first: most show the model's label as a\n"
        "suggestion (checks and a random share show none). Answers come back at once; after "
        f"{s.min_new_labels} new labels the scheduler retrains,\n"
        "promotes the new model only if it is better on held-out labels, and pushes the\n"
        "next batch. `hitl jobs`: the jobs. `hitl report`: var/report.html.\n"
        "`make down` stops everything; `make up` again resumes where you left off.",
        title="hitl is up"))


def down(s: StackSettings | None = None) -> None:
    s = s or StackSettings()
    s.var_dir = s.var_dir.resolve()
    down_parts(s, ("scheduler", "ml-backend", "label-studio", *ARGILLA_PARTS))


def down_parts(s: StackSettings, names: tuple[str, ...]) -> None:
    """Stop the named processes (their whole process groups) by their pid files."""
    for name in names:
        pid_file = s.var_dir / "run" / f"{name}.pid"
        pid = _alive(pid_file)
        if pid is None:
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        for _ in range(150):
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        console.print(f"stopped {name} (pid {pid})")
