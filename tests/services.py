"""Real PostgreSQL and Redis servers for the tests: Debian's binaries, private data folders,
loopback only, free ports, removed afterwards. Nothing is mocked: the scale-out tests run on
these, as a region's installation runs on its database and queue servers."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from gateway.demo.launcher import free_port

PG_BIN = Path("/usr/lib/postgresql")


def _pg_bin(name: str) -> str:
    found = sorted(PG_BIN.glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise FileNotFoundError(f"PostgreSQL's {name} (apt install postgresql)")
    return str(found[-1])


def _wait_port(port: int, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


class PostgresServer:
    """A private PostgreSQL cluster (``initdb``) on a free loopback port. PostgreSQL refuses
    to run as root, so under root it runs as the ``postgres`` account Debian's package makes.
    ``fsync=off``: the tests check claims and recovery of our processes, not the server's own
    durability."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="aircon-pg-"))
        self.port = free_port()
        self.user = "aircon"
        self._as: list[str] = []
        if os.getuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._template = ""

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self._as, *cmd], check=True, capture_output=True, cwd=self.root)

    def start(self) -> PostgresServer:
        data = self.root / "data"
        self._run(_pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", self.user,
                  "--no-sync", "-E", "UTF8")  # fmt: skip
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(_pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l",
                  str(self.root / "server.log"), "-w", "-t", "60", "start")  # fmt: skip
        _wait_port(self.port, 30, "PostgreSQL")
        return self

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def _sql(self, statement: str) -> None:
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    def new_database(self) -> str:
        """A fresh database at this release's schema (copied from a migrated template, which
        is made with the gateway's own migrations the first time); returns its URL."""
        if not self._template:
            from gateway.db.database import Store

            self._sql("CREATE DATABASE aircon_template")
            Store(self.url("aircon_template")).engine.dispose()
            self._template = "aircon_template"
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._sql(f"CREATE DATABASE {name} TEMPLATE {self._template}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(_pg_bin("pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


class RedisServer:
    """Debian's ``redis-server`` on a free loopback port, with a password and no persistence:
    a restart loses every queued task, as a crashed queue server would."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="aircon-redis-"))
        self.port = free_port()
        self.password = uuid.uuid4().hex
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--requirepass",
             self.password, "--save", "", "--appendonly", "no", "--dir", str(self.root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_port(self.port, 20, "Redis")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        """Kill and start again on the same port: everything queued is gone."""
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
