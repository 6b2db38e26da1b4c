"""Run a local Label Studio from its own venv (never a dependency of our package), on loopback.

Used by ``hitl up`` and by the test fixtures. The first start on a fresh data dir runs Django
migrations (about 45 s); starting on a copy of an already-migrated dir takes about 5 s, so the
tests copy a template built once per machine (under ``HITL_TOOLS_DIR``, keyed by version).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hitl.local.processes import free_port, port_is_free, stop_process_group, wait_for_health

LS_VERSION = "1.23.2"
TOOLS_DIR = Path(os.environ.get("HITL_TOOLS_DIR", Path.home() / ".cache" / "hitl"))


def label_studio_bin() -> Path:
    return Path(os.environ.get("HITL_LABEL_STUDIO_BIN", TOOLS_DIR / f"label-studio-{LS_VERSION}" / "bin" / "label-studio"))


@dataclass
class LabelStudioServer:
    url: str
    token: str
    username: str
    password: str
    data_dir: Path
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        stop_process_group(self.process)


def _env(data_dir: Path, username: str, password: str, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "POSTGRE_", "LABEL_STUDIO_"))}
    env.update(
        LABEL_STUDIO_USERNAME=username, LABEL_STUDIO_PASSWORD=password, LABEL_STUDIO_USER_TOKEN=token,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true", LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        ML_BLOCK_LOCAL_IP="false", SSRF_PROTECTION_ENABLED="false", LATEST_VERSION_CHECK="false",
        SENTRY_DSN="", FRONTEND_SENTRY_DSN="", LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        COLLECT_ANALYTICS="false",
    )
    return env


def start(data_dir: Path, *, username: str, password: str, token: str, port: int | None = None, timeout: float = 180.0, log_path: Path | None = None) -> LabelStudioServer:
    """Start Label Studio on ``data_dir`` on a loopback port and wait for ``/health``.

    The user is created on first start from ``username``/``password``/``token``. Label Studio
    silently takes the next port when the one asked for is busy, so the port is checked first.
    """
    exe = label_studio_bin()
    if not exe.exists():
        raise FileNotFoundError(f"Label Studio is not installed at {exe}; run `make label-studio`")
    if port is None:
        port = free_port()
    elif not port_is_free(port):
        raise OSError(f"port {port} is busy; Label Studio would silently move to another one")
    url = f"http://127.0.0.1:{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_path or data_dir.parent / f"{data_dir.name}.log"
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [str(exe), "start", "--no-browser", "--data-dir", str(data_dir), "--internal-host", "127.0.0.1",
             "--port", str(port), "--host", url],
            env=_env(data_dir, username, password, token), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=data_dir.parent)
    wait_for_health(url, proc, timeout=timeout, log_path=log_path, name="Label Studio")
    return LabelStudioServer(url, token, username, password, data_dir, proc, log_path)


def template_dir(*, username: str, password: str, token: str) -> Path:
    """A migrated data dir holding one user, built once per machine (and per user) under a file lock."""
    key = hashlib.sha256(f"{username}\0{password}\0{token}".encode()).hexdigest()[:12]
    template = TOOLS_DIR / f"label-studio-{LS_VERSION}-template-{key}"
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    with open(template.with_name(template.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (template / "label_studio.sqlite3").exists():
            building = template.with_name(template.name + ".building")
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir(parents=True)
            server = start(building, username=username, password=password, token=token, timeout=300)
            server.stop()
            shutil.rmtree(template, ignore_errors=True)
            building.rename(template)
    return template


def start_from_template(workdir: Path, *, username: str, password: str, token: str) -> LabelStudioServer:
    """Copy the template for this user into ``workdir`` and start Label Studio on the copy."""
    data_dir = workdir / "label-studio-data"
    shutil.copytree(template_dir(username=username, password=password, token=token), data_dir,
                    ignore=shutil.ignore_patterns("*.log"))
    return start(data_dir, username=username, password=password, token=token)


def throwaway_credentials() -> dict[str, str]:
    """A user for a throwaway local Label Studio (the simulator, the benchmarks): made once per
    machine and kept (mode 0600) under ``HITL_TOOLS_DIR``, so its template is built once."""
    path = TOOLS_DIR / "label-studio-local-user.json"
    if not path.exists():
        TOOLS_DIR.mkdir(parents=True, exist_ok=True)
        creds = {"username": "hitl@localhost.localdomain", "password": secrets.token_urlsafe(12),
                 "token": secrets.token_hex(20)}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(creds))
        tmp.chmod(0o600)
        tmp.replace(path)
    return json.loads(path.read_text())
