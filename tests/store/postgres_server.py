"""A throwaway PostgreSQL server for tests and benchmarks: a fresh cluster in a temporary directory.

`PostgresCluster.start()` runs Debian's `initdb` and `pg_ctl` (found with `pg_config --bindir`, else under
/usr/lib/postgresql/*/bin) on a free port on 127.0.0.1, with its unix socket in the same temporary directory, as the
`postgres` system user when this process is root (initdb refuses root). `stop()` ends the server and deletes the
directory. `postgres_cluster()` gives the test session's one cluster, started on first use; `tests/conftest.py`
stops it at the end of the session, also when tests failed.

Without PostgreSQL (or psycopg) the tests that need it skip with a message saying how to enable them; with
AGL_REQUIRE_POSTGRES=1 (CI) they fail instead.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["PostgresCluster", "fresh_database", "postgres_cluster", "require_postgres", "stop_postgres_cluster"]

HOW_TO_ENABLE = (
    "install Debian's PostgreSQL server (`apt-get install postgresql`, or `make postgres`) and the driver "
    "(`pip install 'agl[postgres]'`); CI sets AGL_REQUIRE_POSTGRES=1 so these tests never skip there"
)


def _missing(reason: str) -> None:
    """Skip (locally) or fail (AGL_REQUIRE_POSTGRES=1) a test that needs PostgreSQL."""
    message = f"PostgreSQL tests need {reason}: {HOW_TO_ENABLE}"
    if os.environ.get("AGL_REQUIRE_POSTGRES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    candidates: list[str] = []
    if shutil.which("pg_config"):
        try:
            candidates.append(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip())
        except OSError:
            pass
    candidates.extend(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))
    for directory in candidates:
        if directory and all(os.access(os.path.join(directory, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return Path(directory)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """One throwaway PostgreSQL server (superuser `agl`, trust authentication, listening on 127.0.0.1 only).

    Args:
        fsync: whether the server syncs to disk (off for tests: the data is thrown away; on for benchmarks).
    """

    def __init__(self, *, fsync: bool = False) -> None:
        self.fsync = fsync
        self.directory: Path | None = None
        self.port = 0
        self._bindir: Path | None = None
        self._as_user: list[str] = []
        self._names = itertools.count(1)
        self._template = ""
        self._spare: list[str] = []

    # -- life cycle -----------------------------------------------------------------------------------------------
    def start(self) -> PostgresCluster:
        """Create the cluster and start its server (RuntimeError with the server's log when it cannot)."""
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl) found")
        self._bindir = bindir
        self.directory = Path(tempfile.mkdtemp(prefix="agl-pg-"))
        if os.geteuid() == 0:
            # initdb refuses to run as root: the cluster belongs to the `postgres` system user.
            import pwd

            try:
                user = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise RuntimeError("running as root and there is no `postgres` user to own the cluster") from exc
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        try:
            self._run(
                "initdb", "-D", str(self.data), "-U", "agl", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"
            )
            self.port = _free_port()
            options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c max_connections=200"
            if not self.fsync:  # a test cluster is thrown away: no need to survive a power loss
                options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (immediately: nothing in it is kept) and delete the cluster's directory."""
        if self.directory is None:
            return
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop", check=False)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def _run(self, program: str, *args: str, check: bool = True) -> None:
        assert self._bindir is not None
        done = subprocess.run(
            [*self._as_user, str(self._bindir / program), *args], capture_output=True, text=True, timeout=120
        )
        if check and done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()} {log}")

    @property
    def data(self) -> Path:
        """The cluster's data directory."""
        assert self.directory is not None
        return self.directory / "data"

    @property
    def log(self) -> Path:
        """The server's log file."""
        assert self.directory is not None
        return self.directory / "server.log"

    # -- databases ------------------------------------------------------------------------------------------------
    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL of database `dbname` over TCP on 127.0.0.1."""
        return f"postgresql://agl@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix: str = "agl_test", *, migrated: bool = False) -> str:
        """A new database, empty or (`migrated`) holding the store's empty tables; returns its DSN.

        A migrated one is copied from a template database migrated once, which is much faster than migrating each.
        """
        import psycopg

        template = "template0"
        if migrated:
            if not self._template:
                from agl.store.postgres import PostgresLightningStore

                dsn = self.create_database("agl_template")
                PostgresLightningStore(dsn, connect_timeout_seconds=30)._pg.close()
                self._template = dsn.rsplit("/", 1)[1]
            template = self._template
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            # FILE_COPY: with fsync off, copying the files beats writing the template through the WAL.
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return self.dsn(name)

    def take_database(self) -> str:
        """A database holding the store's empty tables: an emptied one given back earlier, else a new copy."""
        return self._spare.pop() if self._spare else self.create_database(migrated=True)

    def give_back(self, dsn: str) -> None:
        """Empty a database from `take_database` (every row deleted) for the next test; drop it when it cannot be
        emptied (e.g. a store still holds its rows locked) or the test changed its schema version."""
        import psycopg

        from agl.store.postgres import SCHEMA, SCHEMA_VERSION

        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("SET lock_timeout = '2s'")
                version = conn.execute(f"SELECT value FROM {SCHEMA}.meta WHERE key = 'schema_version'").fetchone()
                if version is None or int(version[0]) != SCHEMA_VERSION:
                    raise RuntimeError("the test changed the schema")
                names = conn.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_name <> 'meta'",
                    (SCHEMA,),
                ).fetchall()
                with conn.transaction():
                    # DELETE, not TRUNCATE: on a few rows it is far cheaper than new files for every table and index.
                    for (name,) in names:
                        conn.execute(f'DELETE FROM {SCHEMA}."{name}"')  # type: ignore[arg-type]
                    conn.execute(f"DELETE FROM {SCHEMA}.meta WHERE key <> 'schema_version'")
        except (psycopg.Error, RuntimeError):
            self.drop_database(dsn)
            return
        self._spare.append(dsn)

    def drop_database(self, dsn: str) -> None:
        """Drop the database of `dsn`, ending its sessions."""
        import psycopg

        name = dsn.rsplit("/", 1)[1]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_SESSION: PostgresCluster | None = None


def require_postgres() -> None:
    """Skip (or, with AGL_REQUIRE_POSTGRES=1, fail) the calling test unless psycopg and a server are available."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        _missing("psycopg 3 and psycopg_pool")
    if find_bindir() is None:
        _missing("the PostgreSQL server binaries (initdb, pg_ctl)")


def postgres_cluster() -> PostgresCluster:
    """The test session's cluster, started on first use (skips or fails the test when PostgreSQL is missing)."""
    global _SESSION
    require_postgres()
    if _SESSION is None:
        _SESSION = PostgresCluster().start()
    return _SESSION


def stop_postgres_cluster() -> None:
    """Stop the session's cluster if one was started."""
    global _SESSION
    cluster, _SESSION = _SESSION, None
    if cluster is not None:
        cluster.stop()


@contextmanager
def fresh_database(*, migrated: bool = True) -> Iterator[str]:
    """The DSN of a database of the caller's own on the session's cluster, holding no data.

    `migrated` (the default): the store's tables, all empty: a new copy of a migrated template or a database an
    earlier test used and that was emptied after it (every row deleted), which is much faster
    than creating one per test. `migrated=False`: a new database without any table, dropped afterwards.
    """
    cluster = postgres_cluster()
    if not migrated:
        dsn = cluster.create_database()
        try:
            yield dsn
        finally:
            cluster.drop_database(dsn)
        return
    dsn = cluster.take_database()
    try:
        yield dsn
    finally:
        cluster.give_back(dsn)
