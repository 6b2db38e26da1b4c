"""``hitl up`` / ``hitl down``: the loop on this machine with embedded defaults.

Label Studio (its own venv, SQLite under ``var/``) and the ML backend run as detached processes
with pid files under ``var/run``; a demo project of Rotten Tomatoes snippets is created once, the
backend registered, and predictions requested for tasks that lack one. Running ``up`` again
resumes the same state; ``down`` stops every process it started.
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

from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.panel import Panel

from sync import label_studio_server

console = Console()

DEMO_TITLE = "hitl demo: Rotten Tomatoes"
DEMO_CONFIG = """<View>
  <Header value="Is this review fresh or rotten?"/>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text" choice="single-radio" showInLine="true">
    <Choice value="fresh"/>
    <Choice value="rotten"/>
  </Choices>
</View>"""


class StackSettings(BaseSettings):
    """Where the local stack keeps its state, and its ports (``HITL_*`` env overrides)."""

    model_config = SettingsConfigDict(env_prefix="HITL_", env_file=".env", extra="ignore")

    var_dir: Path = Path("var")
    ls_port: int = 8080
    backend_port: int = 9090
    demo_tasks: int = 500
    seed_labels: int = 300


@dataclass
class Credentials:
    username: str
    password: str
    token: str


def _credentials(var: Path) -> Credentials:
    """Generated on the first ``up`` and kept (mode 0600) so later runs log in as the same user."""
    path = var / "credentials.json"
    if path.exists():
        return Credentials(**json.loads(path.read_text()))
    creds = Credentials("admin@example.com", secrets.token_urlsafe(12), secrets.token_hex(20))
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


def _ensure_model(s: StackSettings) -> None:
    from connector.model_store import ModelStore

    if ModelStore(s.var_dir / "models").current() is None:
        console.print(f"training a first model on {s.seed_labels} labelled snippets (the seed)")
        subprocess.run([sys.executable, "-m", "connector.cli", "train", "rotten_tomatoes", "--limit",
                        str(s.seed_labels), "--model-root", str(s.var_dir / "models")], check=True)


def _ensure_label_studio(s: StackSettings, creds: Credentials) -> str:
    run = s.var_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{s.ls_port}"
    if _alive(run / "label-studio.pid") and label_studio_server.is_healthy(url, timeout=2):
        return url
    console.print(f"starting Label Studio on {url} (first start migrates its database: about a minute)")
    server = label_studio_server.start(s.var_dir / "label-studio", port=s.ls_port, username=creds.username,
                                       password=creds.password, token=creds.token, timeout=300,
                                       log_path=s.var_dir / "log-label-studio.txt")
    (run / "label-studio.pid").write_text(str(server.process.pid))
    return url


def _ensure_backend(s: StackSettings) -> str:
    run = s.var_dir / "run"
    url = f"http://127.0.0.1:{s.backend_port}"
    if _alive(run / "ml-backend.pid") and label_studio_server.is_healthy(url, timeout=2):
        return url
    log = s.var_dir / "log-ml-backend.txt"
    env = {**os.environ, "HITL_MODEL_ROOT": str((s.var_dir / "models").resolve()), "HITL_PORT": str(s.backend_port),
           "HITL_HOST": "127.0.0.1", "HITL_EVENTS_PATH": str((s.var_dir / "events" / "ml_backend.jsonl").resolve()),
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ml_backend"], env=env, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    (run / "ml-backend.pid").write_text(str(proc.pid))
    console.print(f"starting the ML backend on {url}")
    label_studio_server.wait_for_health(url, proc, timeout=120, log_path=log, name="ML backend")
    return url


def _ensure_demo_project(s: StackSettings, ls_url: str, backend_url: str, creds: Credentials) -> int:
    import numpy as np
    from label_studio_sdk import LabelStudio

    from connector.classifier import stratified_split
    from connector.datasets import rotten_tomatoes

    ls = LabelStudio(base_url=ls_url, api_key=creds.token)
    project = next((p for p in ls.projects.list() if p.title == DEMO_TITLE), None)
    if project is None:
        project = ls.projects.create(title=DEMO_TITLE, label_config=DEMO_CONFIG,
                                     description="Snippets the model scored; label the uncertain ones first.")
    if not ls.projects.get(project.id).task_number:
        ds = rotten_tomatoes()
        _, keep = stratified_split(np.array(ds.labels), s.demo_tasks / len(ds.labels), seed=1)
        # the true label stays out of the task data: the loop must not see it
        ls.projects.import_tasks(project.id, request=[{"text": ds.texts[i], "source_id": int(i)} for i in keep])
    if not ls.ml.list(project=project.id):
        ls.ml.create(project=project.id, url=backend_url, title="hitl ML backend", is_interactive=False)
    stats = ls.projects.get(project.id)
    if (stats.total_predictions_number or 0) >= (stats.task_number or 0):
        return project.id
    missing = [t.id for t in ls.tasks.list(project=project.id, fields="all", page_size=500) if not t.predictions]
    if missing:
        console.print(f"requesting predictions for {len(missing)} tasks")
        ls.actions.create(id="retrieve_tasks_predictions", project=project.id,
                          selected_items={"all": False, "included": missing})
    return project.id


def up(s: StackSettings | None = None) -> None:
    s = s or StackSettings()
    s.var_dir = s.var_dir.resolve()
    s.var_dir.mkdir(parents=True, exist_ok=True)
    creds = _credentials(s.var_dir)
    _ensure_model(s)
    ls_url = _ensure_label_studio(s, creds)
    backend_url = _ensure_backend(s)
    project_id = _ensure_demo_project(s, ls_url, backend_url, creds)
    console.print(Panel.fit(
        f"Label Studio  [bold]{ls_url}/projects/{project_id}/data[/bold]\n"
        f"login         {creds.username} / {creds.password}\n"
        f"ML backend    {backend_url}  (POST /v1/predict, Label Studio protocol at /predict)\n\n"
        "Sort the data manager by prediction score (ascending) and label the least certain first;\n"
        "each task shows the model's label and its calibrated confidence as a pre-annotation.\n"
        "`make down` stops everything; `make up` again resumes where you left off.",
        title="hitl is up"))


def down(s: StackSettings | None = None) -> None:
    s = s or StackSettings()
    s.var_dir = s.var_dir.resolve()
    for name in ("ml-backend", "label-studio"):
        pid_file = s.var_dir / "run" / f"{name}.pid"
        pid = _alive(pid_file)
        if pid is None:
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        console.print(f"stopped {name} (pid {pid})")
