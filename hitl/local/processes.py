"""Process helpers shared by the local launchers (Label Studio, argilla-server, the ML backend,
the scheduler) and the test fixtures: free loopback ports, health waits, process-group stops."""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A loopback port nobody listens on now (the OS picks it)."""
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


def http_ok(url: str, *, headers: dict[str, str] | None = None, timeout: float = 2.0) -> bool:
    """``GET url`` answers 200."""
    try:
        return httpx.get(url, headers=headers, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def is_healthy(url: str, *, timeout: float = 1.0) -> bool:
    """``GET {url}/health`` answers 200."""
    return http_ok(f"{url}/health", timeout=timeout)


def stop_process_group(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process group started with ``start_new_session``; SIGKILL it after ``timeout``."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


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


def group_rss(pgid: int) -> int:
    """Resident memory (bytes) of every live process in process group ``pgid``."""
    total = 0
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5 of stat, after pid and (comm): state, ppid, pgrp
                with open(stat.replace("stat", "status")) as fh:
                    for line in fh:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            continue
    return total
