"""Run a local Label Studio from its own venv (never a dependency of our package), on loopback.

Used by ``hitl up`` and by the test fixtures. The first start on a fresh data dir runs Django
migrations (about 45 s); starting on a copy of an already-migrated dir takes about 5 s, so the
tests copy a template built once per machine (under ``HITL_TOOLS_DIR``, keyed by version).
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
PASSWORD = "hitl-test-password"  # the template's user: tests only
TOKEN = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"  # 40 chars, a legacy token; tests only


def label_studio_bin() -> Path:
    return Path(os.environ.get("HITL_LABEL_STUDIO_BIN", TOOLS_DIR / f"label-studio-{LS_VERSION}" / "bin" / "label-studio"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nobody listens on ``port`` (connections in TIME_WAIT do not count, as for the server itself)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


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


def stop_process_group(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process group started with ``start_new_session``; SIGKILL it after ``timeout``."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def is_healthy(url: str, *, timeout: float = 1.0) -> bool:
    """``GET {url}/health`` answers 200."""
    try:
        return httpx.get(f"{url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for_health(url: str, process: subprocess.Popen, *, timeout: float, log_path: Path, name: str) -> None:
    """Poll ``/health`` until it answers; stop the process and raise with the log's path when it
    exits first or does not answer within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}; log: {log_path}")
        if is_healthy(url):
            return
        time.sleep(0.3)
    stop_process_group(process)
    raise TimeoutError(f"{name} did not answer {url}/health within {timeout:.0f} s; log: {log_path}")


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


def start(data_dir: Path, *, port: int | None = None, username: str = USERNAME, password: str = PASSWORD,
          token: str = TOKEN, timeout: float = 180.0, log_path: Path | None = None) -> LabelStudioServer:
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
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [str(exe), "start", "--no-browser", "--data-dir", str(data_dir), "--internal-host", "127.0.0.1",
         "--port", str(port), "--host", url],
        env=_env(data_dir, username, password, token), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=data_dir.parent)
    wait_for_health(url, proc, timeout=timeout, log_path=log_path, name="Label Studio")
    return LabelStudioServer(url, token, username, password, data_dir, proc, log_path)


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
