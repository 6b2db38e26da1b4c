"""A local argilla-server (for ``hitl up`` with ``HITL_TOOL=argilla`` and the integration tests):
Redis, an OpenSearch emulator, the server and its worker. (Not named ``argilla``: the launcher
beside it runs as a script, and its folder comes first on that interpreter's path.)

Why it is built this way: no real Elasticsearch or OpenSearch can run on our test machines (no JVM,
no Docker engine), so the search engine is ``osmem-server``, an in-memory OpenSearch emulator
shipped as a binary in its wheel. The emulator lacks scripted updates, which argilla-server 2.8.0
uses in three methods of ``OpenSearchEngine`` (``update_record_response``,
``delete_record_response``, ``delete_record_suggestion``); ``hitl/local/argilla_launcher.py``,
run by the argilla-server venv's Python, replaces them with a read-modify-write of the indexed
document and then starts the server (uvicorn on ``argilla_server:app``) or the rq worker that
delivers webhooks. Production runs a real search engine (``docker-compose.yml``, profile ``argilla``).
The emulator keeps its index in memory: a stack started again on the same work dir rebuilds it from
the database (``argilla_server search-engine reindex``) before the server starts.

Everything listens on free loopback ports and lives in one work dir: Redis (no persistence),
osmem-server, a SQLite database (``database migrate`` + ``database users create_default``, run
once per machine into a template that each session copies), the server and one worker. Each
process gets its own process group so ``stop()`` can end it and all its children (SIGTERM, then
SIGKILL); ``stop()`` is also registered with ``atexit``. Start: about 8 s with the template (21 s
the first time on a machine); about 0.8 GB RSS, most of it the server and the worker (whose rq
scheduler is a fork of it, so the two share most pages).

argilla-server lives in its own venv (``make argilla-server``; ``$HITL_TOOLS_DIR/argilla-server-2.8.0``),
never in ours: it pins its own FastAPI, SQLAlchemy and click. Redis is Debian's ``redis-server``.
"""

from __future__ import annotations

import atexit
import fcntl
import glob
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hitl.local.processes import free_port, group_rss, http_ok

ARGILLA_SERVER_VERSION = "2.8.0"
TOOLS_DIR = Path(os.environ.get("HITL_TOOLS_DIR", Path.home() / ".cache" / "hitl"))
LAUNCHER = Path(__file__).with_name("argilla_launcher.py")
USERNAME = "argilla"  # what `database users create_default` creates (an owner, with workspace "argilla")


class ArgillaUnavailable(RuntimeError):
    """argilla-server, osmem-server or redis-server is not installed."""


def argilla_venv() -> Path:
    return Path(os.environ.get("HITL_ARGILLA_VENV", TOOLS_DIR / f"argilla-server-{ARGILLA_SERVER_VERSION}"))


def _find_tools() -> tuple[Path, Path, str]:
    """The argilla-server venv's python, the osmem-server binary in it, and redis-server."""
    venv = argilla_venv()
    python = venv / "bin" / "python"
    if not (python.exists() and glob.glob(str(venv / "lib" / "python*" / "site-packages" / "argilla_server"))):
        raise ArgillaUnavailable(f"argilla-server {ARGILLA_SERVER_VERSION} is not installed in {venv}; "
                                 "run `make argilla-server`")
    osmem = os.environ.get("OSMEM_SERVER_BIN") or next(
        iter(glob.glob(str(venv / "lib" / "python*" / "site-packages" / "osmem_server" / "bin" / "osmem-server"))), "")
    if not osmem or not os.access(osmem, os.X_OK):
        raise ArgillaUnavailable(f"osmem-server's binary is missing from {venv}; run `make argilla-server`")
    redis = shutil.which("redis-server")
    if not redis:
        raise ArgillaUnavailable("redis-server not found: install it with `apt-get install -y redis-server` "
                                 "(CI's .ci/run does this)")
    return python, Path(osmem), redis


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _env(database: Path, osmem_port: int, redis_port: int, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARGILLA_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(
        ARGILLA_HOME_PATH=str(home),
        ARGILLA_DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        ARGILLA_SEARCH_ENGINE="opensearch",
        ARGILLA_ELASTICSEARCH=f"http://127.0.0.1:{osmem_port}",
        ARGILLA_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        ARGILLA_AUTH_SECRET_KEY=secrets.token_hex(32),
        HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
    )
    return env


def template_database(python: Path, api_key: str, password: str, *, timeout: float = 300.0) -> Path:
    """A migrated SQLite database holding the default user, built once per machine under a file lock.

    ``database migrate`` and ``database users create_default`` take about 6 s each here (mostly
    importing argilla_server), so each test session copies this file instead of running them.
    """
    key = hashlib.sha256(f"{api_key}\0{password}".encode()).hexdigest()[:12]
    template = TOOLS_DIR / f"argilla-server-{ARGILLA_SERVER_VERSION}-{key}.db"
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    with open(template.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not template.exists():
            building = Path(tempfile.mkdtemp(prefix="hitl-argilla-db-", dir=TOOLS_DIR))
            try:
                env = _env(building / "argilla.db", 9, 9, building / "home")  # neither service is contacted
                for args in (["database", "migrate"],
                             ["database", "users", "create_default", "--api-key", api_key, "--password", password]):
                    done = subprocess.run([str(python), "-m", "argilla_server", *args], env=env, cwd=building,
                                          check=False, capture_output=True, text=True, timeout=timeout)
                    if done.returncode != 0:
                        raise RuntimeError(f"argilla_server {' '.join(args[:3])} failed ({done.returncode}):\n"
                                           f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
                (building / "argilla.db").rename(template)
            finally:
                shutil.rmtree(building, ignore_errors=True)
    return template


@dataclass
class ArgillaStack:
    """A running stack; ``url`` and ``api_key`` are what ``rg.Argilla`` needs (the key is an owner's)."""

    url: str
    api_key: str
    username: str
    password: str
    workdir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    start_seconds: float = 0.0

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory per component (each process group, children included)."""
        return {name: group_rss(p.pid) for name, p in self.processes.items() if p.poll() is None}

    def log(self, name: str, chars: int = 3000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM every process group (server and worker first), then SIGKILL what is left; safe twice."""
        procs = list(reversed(self.processes.items()))
        for _, proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for _, proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for _, proc in procs:  # the group may outlive its leader (forked rq work horses)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            if proc.stdin:
                proc.stdin.close()
        self.processes.clear()


def start(workdir: Path, *, api_key: str, password: str, timeout: float = 120.0,
          port: int | None = None, detached: bool = False) -> ArgillaStack:
    """Start Redis, osmem-server, argilla-server and its worker under ``workdir``; wait until all answer.

    ``port``: the server's port (default: a free one). ``detached``: the processes outlive this one
    (``hitl up``; stop them by their process groups); otherwise they stop when it exits. A work
    dir that already holds a database is resumed: its search index is rebuilt first.

    Raises ``ArgillaUnavailable`` when a component is not installed, ``RuntimeError`` (with the
    component's log) when one exits, ``TimeoutError`` when one does not answer in ``timeout`` s.
    """
    python, osmem, redis = _find_tools()
    t0 = time.monotonic()
    deadline = t0 + timeout
    workdir.mkdir(parents=True, exist_ok=True)
    port = {"redis": free_port(), "osmem": free_port(), "argilla": port or free_port()}
    url = f"http://127.0.0.1:{port['argilla']}"
    stack = ArgillaStack(url, api_key, USERNAME, password, workdir)
    if not detached:
        atexit.register(stack.stop)  # should the test session die without running its finalizers

    def spawn(name: str, cmd: list[str], **kwargs) -> subprocess.Popen:
        with open(workdir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=workdir, **kwargs)
        stack.processes[name] = proc
        return proc

    def wait_for(name: str, ready) -> None:
        proc = stack.processes[name]
        while not ready():
            if proc.poll() is not None:
                stack.stop()
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{stack.log(name)}")
            if time.monotonic() > deadline:
                stack.stop()
                raise TimeoutError(f"{name} did not answer within {timeout} s:\n{stack.log(name)}")
            time.sleep(0.2)

    try:
        (workdir / "redis").mkdir(exist_ok=True)
        spawn("redis", [redis, "--bind", "127.0.0.1", "--port", str(port["redis"]), "--save", "",
                        "--appendonly", "no", "--dir", str(workdir / "redis"), "--daemonize", "no"])
        if detached:
            spawn("osmem", [str(osmem), "--addr", f"127.0.0.1:{port['osmem']}", "--no-ja", "--no-stdin-watch"],
                  stdin=subprocess.DEVNULL)
        else:
            # osmem exits when its stdin closes or this process dies: a safety net if stop() never runs
            spawn("osmem", [str(osmem), "--addr", f"127.0.0.1:{port['osmem']}", "--parent-pid", str(os.getpid()),
                            "--no-ja"], stdin=subprocess.PIPE)
        env = _env(workdir / "argilla.db", port["osmem"], port["redis"], workdir / "home")
        resume = (workdir / "argilla.db").exists()
        if not resume:
            shutil.copyfile(template_database(python, api_key, password), workdir / "argilla.db")
        wait_for("redis", lambda: _redis_ping(port["redis"]))
        wait_for("osmem", lambda: http_ok(f"http://127.0.0.1:{port['osmem']}/"))
        if resume:  # the emulator's index is in memory: rebuild it from the database
            done = subprocess.run([str(python), str(LAUNCHER), "reindex"], env=env, cwd=workdir, check=False,
                                  capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0:
                raise RuntimeError(f"reindex failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        spawn("worker", [str(python), str(LAUNCHER), "worker"], env=env)
        spawn("argilla", [str(python), str(LAUNCHER), "server", "--host", "127.0.0.1",
                          "--port", str(port["argilla"])], env=env)
        wait_for("argilla", lambda: http_ok(f"{url}/api/v1/me", headers={"X-Argilla-Api-Key": api_key}))
        wait_for("worker", lambda: "Listening on" in stack.log("worker", 20000))
    except BaseException:
        stack.stop()
        raise
    stack.start_seconds = time.monotonic() - t0
    return stack
