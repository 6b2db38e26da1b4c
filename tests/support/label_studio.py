"""Start a real Label Studio for tests: its own venv, a pre-migrated template data dir, loopback.

The first start on a fresh data dir runs Django migrations (about 45 s); starting on a copy of an
already-migrated dir takes about 5 s. So the template is built once per machine (under
``HITL_TOOLS_DIR``, keyed by Label Studio's version) and copied for each test session.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

LS_VERSION = "1.23.2"
TOOLS_DIR = Path(os.environ.get("HITL_TOOLS_DIR", Path.home() / ".cache" / "hitl"))
USERNAME = "admin@example.com"
PASSWORD = "hitl-test-password"
TOKEN = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"  # 40 chars, a legacy token


def label_studio_bin() -> Path:
    return Path(os.environ.get("HITL_LABEL_STUDIO_BIN", TOOLS_DIR / f"label-studio-{LS_VERSION}" / "bin" / "label-studio"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "POSTGRE_", "LABEL_STUDIO_"))}
    env.update(
        LABEL_STUDIO_USERNAME=USERNAME, LABEL_STUDIO_PASSWORD=PASSWORD, LABEL_STUDIO_USER_TOKEN=TOKEN,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true", LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        ML_BLOCK_LOCAL_IP="false", SSRF_PROTECTION_ENABLED="false", LATEST_VERSION_CHECK="false",
        SENTRY_DSN="", FRONTEND_SENTRY_DSN="", LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        COLLECT_ANALYTICS="false",
    )
    return env


def start(data_dir: Path, *, timeout: float = 180.0) -> LabelStudioServer:
    """Start Label Studio on ``data_dir`` on a free loopback port and wait for ``/health``."""
    exe = label_studio_bin()
    if not exe.exists():
        raise FileNotFoundError(f"Label Studio is not installed at {exe}; run `make label-studio`")
    port = free_port()  # Label Studio silently takes the next port when this one is busy
    url = f"http://127.0.0.1:{port}"
    log_path = data_dir.parent / f"{data_dir.name}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(exe), "start", "--no-browser", "--data-dir", str(data_dir), "--internal-host", "127.0.0.1",
         "--port", str(port), "--host", url],
        env=_env(data_dir), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=data_dir.parent)
    server = LabelStudioServer(url, TOKEN, USERNAME, PASSWORD, data_dir, proc, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {proc.returncode}; log: {log_path}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise TimeoutError(f"Label Studio did not answer /health within {timeout} s; log: {log_path}")


def template_dir() -> Path:
    """A migrated data dir with the test user, built once per machine under a file lock."""
    template = TOOLS_DIR / f"label-studio-{LS_VERSION}-template"
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    with open(TOOLS_DIR / f"label-studio-{LS_VERSION}-template.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (template / "label_studio.sqlite3").exists():
            building = template.with_name(template.name + ".building")
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir(parents=True)
            server = start(building, timeout=300)
            server.stop()
            shutil.rmtree(template, ignore_errors=True)
            building.rename(template)
    return template


def start_from_template(workdir: Path) -> LabelStudioServer:
    """Copy the template into ``workdir`` and start Label Studio on the copy."""
    data_dir = workdir / "label-studio-data"
    shutil.copytree(template_dir(), data_dir, ignore=shutil.ignore_patterns("*.log"))
    return start(data_dir)
