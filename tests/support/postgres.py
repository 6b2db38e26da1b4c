"""A throwaway PostgreSQL cluster for tests: ``initdb`` into a temporary folder, ``pg_ctl start``
on a free loopback port (its unix socket in that folder too), ``pg_ctl stop -m fast`` at the end.

Uses Debian's server binaries (``/usr/lib/postgresql/<version>/bin``; ``apt-get install postgresql``,
as CI does) or ``initdb``/``pg_ctl`` on ``PATH``. initdb refuses to run as root, so as root the
cluster is made and run by the ``postgres`` OS user (``runuser``) in a folder it owns.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hitl.local.processes import free_port

INSTALL_HINT = ("PostgreSQL server binaries (initdb, pg_ctl) not found: install them with "
                "`apt-get install -y postgresql` (CI's .ci/run does this)")
# durability is not wanted in a throwaway cluster; these make it start and write faster
SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


class PostgresUnavailable(RuntimeError):
    """The binaries or the OS user needed to run a cluster are missing."""


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/*/bin`` holding initdb and pg_ctl, else the one on PATH."""
    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all(os.access(Path(bindir, tool), os.X_OK) for tool in ("initdb", "pg_ctl")):
            return Path(bindir)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    raise PostgresUnavailable(INSTALL_HINT)


@dataclass
class PostgresCluster:
    """A running cluster; ``url(db)`` gives SQLAlchemy URLs for its databases (user ``postgres``, trust auth)."""

    bindir: Path
    root: Path
    port: int
    run_as: list[str] = field(default_factory=list)
    running: bool = True

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @classmethod
    def start(cls, attempts: int = 3) -> PostgresCluster:
        """initdb and start a cluster; raises ``PostgresUnavailable`` or ``RuntimeError`` (with the log)."""
        bindir = find_bindir()
        run_as: list[str] = []
        root = Path(tempfile.mkdtemp(prefix="hitl-pg-"))
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(root)
                raise PostgresUnavailable("running as root needs the `postgres` OS user to run initdb; "
                                          + INSTALL_HINT) from None
            os.chown(root, user.pw_uid, user.pw_gid)
            run_as = ["runuser", "-u", "postgres", "--"]
        cluster = cls(bindir, root, 0, run_as, running=False)
        try:
            cluster._run("initdb", "-D", str(cluster.datadir), "-U", "postgres", "--auth=trust",
                         "-E", "UTF8", "--locale=C", "--no-sync")
            for attempt in range(attempts):  # another process may take the free port before we do
                cluster.port = free_port()
                try:
                    cluster._run("pg_ctl", "start", "-D", str(cluster.datadir), "-l", str(root / "server.log"),
                                 "-w", "-t", "60", "-o",
                                 f"-p {cluster.port} -k {root} -c listen_addresses=127.0.0.1 {SERVER_OPTIONS}")
                    break
                except RuntimeError:
                    if attempt == attempts - 1:
                        raise
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        cluster.running = True
        atexit.register(cluster.stop)  # should the test session die without running its finalizers
        return cluster

    def _run(self, tool: str, *args: str) -> str:
        proc = subprocess.run([*self.run_as, str(self.bindir / tool), *args], cwd=self.root, check=False,
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args[:2])} failed ({proc.returncode}):\n"
                               f"{proc.stdout}{proc.stderr}{tail}")
        return proc.stdout

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(statement)

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        from psycopg import sql

        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)).as_string())
        return self.url(name)

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)).as_string())

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its folder; safe to call twice."""
        if not self.running:
            return
        self.running = False
        try:
            self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "60")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
