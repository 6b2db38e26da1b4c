"""A named lock in the state database, so that two schedulers never run one job at once.

PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a connection held for
the lock's lifetime; it is released when that connection closes, so a killed process never
leaves it held. SQLite: an exclusive ``flock`` on a file beside the database
(``<db>.<name>.lock``), which the kernel also releases when the process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, text


def job_lock(job_id: str) -> str:
    """The lock a scheduler job runs under; ``hitl sync`` takes ``job_lock("sync")`` too."""
    return f"hitl-job-{job_id}"


def _key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_try_advisory_lock``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def try_lock(engine: Engine, name: str, *, wait: bool = False) -> Iterator[bool]:
    """Yield ``True`` holding the lock ``name``, or ``False`` at once when another holder has it
    (with ``wait``: block until the other holder lets go, then yield ``True``)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            if wait:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _key(name)})
                got = True
            else:
                got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _key(name)}).scalar())
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _key(name)})
                    conn.commit()
        return
    if engine.dialect.name != "sqlite" or not engine.url.database or engine.url.database == ":memory:":
        raise ValueError(f"no lock for {engine.url.render_as_string(hide_password=True)}: use PostgreSQL or a SQLite file")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    path = Path(f"{engine.url.database}.{safe}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
