"""An ephemeral PostgreSQL cluster in a temporary directory, reachable only by its Unix socket.

Used by the test suite, the benchmarks and `cvlan-sim run`. It is started from the Debian server
binaries as the `postgres` system user (initdb refuses root) and removed on stop."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

# Tuning for a 2-core box holding 100k nodes; see docs/OPERATIONS.md ("PostgreSQL").
DEFAULT_CONF = {
    "listen_addresses": "''",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "work_mem": "8MB",
    "maintenance_work_mem": "128MB",
    "effective_cache_size": "1GB",
    "wal_buffers": "16MB",
    "checkpoint_timeout": "15min",
    "max_wal_size": "2GB",
    "synchronous_commit": "off",
    "autovacuum_vacuum_scale_factor": "0.05",
}


def pg_bindir() -> Path:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    for d in reversed(dirs):
        if os.access(os.path.join(d, "initdb"), os.X_OK):
            return Path(d)
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError("PostgreSQL server binaries not found: install the Debian package 'postgresql'")


class PgCluster:
    """initdb + pg_ctl start in a temp dir; `url(db)` gives an asyncpg SQLAlchemy URL over the socket."""

    def __init__(
        self, base: Path | None = None, conf: dict[str, str] | None = None, fsync: bool = True
    ) -> None:
        self.bindir = pg_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="cvlan-pg-", dir=base))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.conf = {**DEFAULT_CONF, **(conf or {})}
        if not fsync:
            self.conf["fsync"] = "off"
        self._user = "postgres" if os.geteuid() == 0 else None

    def _as_user(self, cmd: list[str]) -> list[str]:
        """Run as the postgres user when we are root (the server refuses to run as root)."""
        return ["runuser", "-u", self._user, "--", *cmd] if self._user else cmd

    def _run(self, *args: str, timeout: float = 120) -> None:
        cmd = self._as_user(list(args))
        subprocess.run(cmd, check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> PgCluster:
        self.sock.mkdir(parents=True)
        if self._user:
            pw = pwd.getpwnam(self._user)
            os.chmod(self.root, 0o755)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            os.chown(self.sock, pw.pw_uid, pw.pw_gid)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self.start_server()
        return self

    def start_server(self) -> None:
        """Start (or restart) the server of an initialised cluster."""
        opts = " ".join(f"-c {k}={v}" for k, v in self.conf.items())
        log = str(self.root / "server.log")
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-w",
            "-t",
            "60",
            "-l",
            log,
            "-o",
            f"-k {self.sock} {opts}",
            "start",
        )

    def stop_server(self) -> None:
        """Stop the server but keep the cluster (to test a database that goes away and comes back)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60)

    def _psql_cmd(self, sql: str, db: str, *opts: str) -> list[str]:
        cmd = [str(self.bindir / "psql"), "-h", str(self.sock), "-U", "postgres", "-d", db, *opts]
        return cmd + ["-v", "ON_ERROR_STOP=1", "-c", sql]

    def psql(self, sql: str, db: str = "postgres") -> None:
        self._run(*self._psql_cmd(sql, db, "-q"))

    def query(self, sql: str, db: str = "postgres") -> list[list[str]]:
        """Rows of a query as text (psql's unaligned output)."""
        cmd = self._as_user(self._psql_cmd(sql, db, "-X", "-A", "-t", "-F", "\t"))
        out = subprocess.run(cmd, check=True, timeout=60, capture_output=True, text=True).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def create_db(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@/{db}?host={self.sock}"

    def stop(self) -> None:
        if self.data.exists():
            try:
                self._run(
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                    timeout=60,
                )
            except (subprocess.SubprocessError, OSError):
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def pid(self) -> int | None:
        p = self.data / "postmaster.pid"
        try:
            return int(p.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.05)
