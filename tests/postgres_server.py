"""A throwaway PostgreSQL server for the tests, and a fresh database on it for each test.

``postgres_db_uri`` is the fixture tests take: the SQLAlchemy URI of a new database
(``postgresql+psycopg://``, no password: the server trusts local connections) that holds
redun's schema and nothing else, as a team's database does after ``redun db upgrade`` (redun
migrates only sqlite databases by itself). The server behind it is started once per session,
on a free port, from the PostgreSQL server binaries (Debian's ``postgresql`` package), by
pytest-postgresql's executor; redun's migrations run once, into a template database, and
each test's database is a copy of it, dropped after the test.

Where the binaries are missing, the tests that take the fixture skip and say how to install
them; under CI (``CI=true``) they fail instead, so that a broken install is never hidden.

PostgreSQL refuses to run as root. Run as root (as CI is), the server runs as an unprivileged
user: ``postgres``, which Debian's package creates, else ``nobody``. Every ``pg_ctl`` the
executor runs goes through ``runuser``, and the server's files live in a directory of that
user's, outside pytest's temporary directories (which only root may enter). Set
``REDUN_MODAL_TEST_PG_DIR`` to choose where that directory is made; ``.ci/run`` does, to
stop any server a killed test run left behind.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from port_for import get_port
from psycopg import sql
from redun.backends.db import RedunBackendDb

try:
    from pytest_postgresql.executors import PostgreSQLExecutor
except ImportError:  # pytest-postgresql < 10, the last ones for Python 3.10
    from pytest_postgresql.executor import PostgreSQLExecutor

MISSING = (
    "PostgreSQL server binaries not found: `apt-get install postgresql` (Debian) "
    "to run the Postgres tests"
)
ROLE = "redun"  # The server's superuser, made by initdb; no password (trust).
# Durability is not what the tests are after: these make a small server on a shared machine
# quicker.
SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
TEMPLATE = "redun_template"
_numbers = itertools.count(1)


@dataclass(frozen=True)
class PostgresServer:
    executor: PostgreSQLExecutor  # started
    host: str
    port: int
    user: str

    def uri(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def create(self, database: str, template: str | None = None) -> None:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        self._administer(statement)

    def drop(self, database: str) -> None:
        """Drop it, ending the connections a test's processes may have left open."""
        self._administer(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )

    def wait_until_ready(self, timeout: float = 60) -> None:
        """Until it accepts connections: its port opens while it is still starting up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._administer(sql.SQL("SELECT 1"))
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _administer(self, statement: sql.Composable) -> None:
        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(statement)


def _make_template(server: PostgresServer) -> None:
    """The template database, with redun's schema at the version this redun needs."""
    server.create(TEMPLATE)
    backend = RedunBackendDb(db_uri=server.uri(TEMPLATE))
    backend.load(migrate=True)
    backend.session.close()
    backend.engine.dispose()  # A database with connections cannot be copied.


def find_pg_ctl() -> str | None:
    """pg_ctl on PATH, else the newest one where Debian installs the server binaries (which
    are not on PATH there)."""
    found = shutil.which("pg_ctl")
    if found:
        return found

    def major(path: Path) -> int:
        return int(path.parts[-3]) if path.parts[-3].isdigit() else -1

    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=major)
    return str(installed[-1]) if installed else None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    pytest.fail("running as root, and no `postgres` or `nobody` user to run PostgreSQL as")


def _as_user(pg_ctl: str, user: str, directory: Path) -> str:
    """A pg_ctl that runs the real one as `user`: the executor runs it as it would pg_ctl."""
    wrapper = directory / "pg_ctl"
    wrapper.write_text(f'#!/bin/sh\nexec runuser -u {user} -- {pg_ctl} "$@"\n')
    wrapper.chmod(stat.S_IRWXU)
    return str(wrapper)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for this session, with the template database in it."""
    pg_ctl = find_pg_ctl()
    if pg_ctl is None:
        if in_ci():
            pytest.fail(f"{MISSING} (CI is set: .ci/run should have installed them)")
        pytest.skip(MISSING)
    root = Path(
        tempfile.mkdtemp(prefix="redun-modal-pg-", dir=os.environ.get("REDUN_MODAL_TEST_PG_DIR"))
    )
    server_dir = root / "server"  # The server's own: its data, socket and log.
    server_dir.mkdir()
    executable = pg_ctl
    if os.geteuid() == 0:
        user = _unprivileged_user()
        root.chmod(0o755)  # Entered by the server's user; the wrapper in it stays root's.
        shutil.chown(server_dir, user)
        executable = _as_user(pg_ctl, user, root)
    executor = PostgreSQLExecutor(
        executable=executable,
        host="127.0.0.1",
        port=get_port(None),
        datadir=str(server_dir / "data"),
        unixsocketdir=str(server_dir),
        logfile=str(server_dir / "postgresql.log"),
        startparams="-w",
        dbname="postgres",
        user=ROLE,
        postgres_options=SERVER_OPTIONS,
    )
    try:
        try:
            executor.start()
        except Exception as error:  # A broken install fails here: say what the server said.
            log = Path(executor.logfile)
            said = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
            pytest.fail(f"PostgreSQL ({pg_ctl}) did not start: {error!r}\n{said}")
        try:
            server = PostgresServer(executor, executor.host, executor.port, executor.user)
            server.wait_until_ready()
            _make_template(server)
            yield server
        finally:
            executor.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_db_uri(postgres_server: PostgresServer, request) -> Iterator[str]:
    """The SQLAlchemy URI of a new database with redun's schema, dropped after the test."""
    name = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())
    database = f"t{next(_numbers)}_{name}"[:63]
    postgres_server.create(database, template=TEMPLATE)
    try:
        yield postgres_server.uri(database)
    finally:
        postgres_server.drop(database)
