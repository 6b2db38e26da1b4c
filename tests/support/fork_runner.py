"""A fork server for random-kill tests: ``hitl`` commands in children forked from a warm parent.

A fresh ``python -m hitl.cli`` spends about two seconds importing before it touches the tool or
the store, so a SIGKILL at a random instant of a fresh process mostly lands in the imports. This
server imports the command line and the sync once (and installs ``kill_points``' page-size
overrides), then forks one child per request: each child is a real process, with its own
connections opened after the fork, that a test can SIGKILL anywhere in its work.

Protocol, one JSON object per line: ``{"run": [args...], "log": path}`` answers ``{"pid": N}``
(the child's stdout and stderr, with INFO logging, go to ``log``); ``{"wait": N}`` answers
``{"code": C}`` once the child has ended (``-9`` when it was SIGKILLed); ``{"poll": N}`` answers at
once, ``{"code": null}`` while it runs. A child is reaped only by a wait or a poll that saw it
end, so its pid cannot be reused while the test may still kill it.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, Self

ROOT = Path(__file__).resolve().parents[2]
# the tools import their SDKs only when first built: imported here, so the children have them too
WARM = ("argilla", "label_studio_sdk", "connector.tools.argilla", "connector.tools.label_studio", "hitl.cli",
        "sync.runner", "sync.service")


def _child(args: list[str], log: str) -> None:
    """In the forked child: run ``hitl *args`` with output to ``log``; never returns."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from hitl.cli import app

        try:
            app(args=args, prog_name="hitl", standalone_mode=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """Read requests on stdin, answer on stdout, until stdin closes."""
    from tests.support import kill_points

    kill_points.install()
    for module in WARM:  # the children start with every module the sync needs
        importlib.import_module(module)

    for line in sys.stdin:
        req = json.loads(line)
        if "run" in req:
            pid = os.fork()
            if pid == 0:
                _child(req["run"], req["log"])
            answer: dict[str, Any] = {"pid": pid}
        else:
            pid, status = os.waitpid(int(req.get("wait") or req["poll"]), 0 if "wait" in req else os.WNOHANG)
            answer = {"code": os.waitstatus_to_exitcode(status) if pid else None}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


class ForkRunner:
    """The client: starts the server with ``env`` and stops it (and any child left) on exit."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**env, "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])}
        self._proc: subprocess.Popen | None = None
        self._live: set[int] = set()

    def __enter__(self) -> Self:
        self._proc = subprocess.Popen([sys.executable, "-c", "from tests.support.fork_runner import serve; serve()"],
                                      env=self.env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, start_new_session=True)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for pid in self._live:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert self._proc is not None
        self._pipe(self._proc.stdin).close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    @staticmethod
    def _pipe(stream: IO[str] | None) -> IO[str]:
        assert stream is not None
        return stream

    def _ask(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self._proc is not None
        self._pipe(self._proc.stdin).write(json.dumps(req) + "\n")
        self._pipe(self._proc.stdin).flush()
        line = self._pipe(self._proc.stdout).readline()
        if not line:
            raise RuntimeError(f"the fork server ended (exit {self._proc.poll()})")
        return json.loads(line)

    def start(self, args: list[str], log: Path) -> int:
        """Fork a child running ``hitl *args``; its pid."""
        pid = int(self._ask({"run": args, "log": str(log)})["pid"])
        self._live.add(pid)
        return pid

    def poll(self, pid: int) -> int | None:
        """The child's exit code if it has ended, else ``None``."""
        code = self._ask({"poll": pid})["code"]
        if code is not None:
            self._live.discard(pid)
        return code

    def wait(self, pid: int) -> int:
        """The child's exit code once it ended (``-9``: SIGKILLed)."""
        code = int(self._ask({"wait": pid})["code"])
        self._live.discard(pid)
        return code
