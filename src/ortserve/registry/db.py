"""Engines and schema migrations for SQLite (single host) and PostgreSQL (replicas)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from ortserve.errors import FailedPrecondition, InvalidInput, Unavailable, logged

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Any fixed 64-bit number: the key of the PostgreSQL advisory lock serialising migrations.
MIGRATION_LOCK_KEY = 0x0672_7365_7276_6501
# Execution option: a transaction that only reads starts with a plain BEGIN on SQLite.
READ_ONLY = "ortserve_read_only"


def make_engine(url: str | sa.URL, **kwargs: Any) -> sa.Engine:
    """An engine for the registry database; extra `kwargs` go to `sqlalchemy.create_engine`."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, **kwargs)
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_recycle", 1800)
    return sa.create_engine(parsed, **kwargs)


def _enable_wal(cursor: Any) -> None:
    """Switch a database to WAL. On a new file, processes starting together can race for the
    switch, and SQLite answers "database is locked" at once rather than waiting; retry briefly."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_engine(url: sa.URL, **kwargs: Any) -> sa.Engine:
    """SQLAlchemy's recipe: pysqlite emits no BEGIN itself; we emit BEGIN IMMEDIATE for writers.

    A deferred BEGIN that later writes fails at once with "database is locked" under contention
    (the lock upgrade does not wait for the busy timeout); BEGIN IMMEDIATE waits for it instead.
    """
    connect_args = dict(kwargs.pop("connect_args", {}))
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    engine = sa.create_engine(url, connect_args=connect_args, **kwargs)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if url.database not in (None, "", ":memory:"):
                _enable_wal(cursor)
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def engine_for(url: str) -> sa.Engine:
    """`make_engine`, with a URL SQLAlchemy cannot use refused in one line naming the setting."""
    try:
        return make_engine(url)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise InvalidInput(f"db is not a usable SQLAlchemy URL: {exc}") from None


def open_registry(url: str) -> sa.Engine:
    """The registry's engine with its schema migrated; one line naming the setting and the address
    (password hidden) when the database cannot be reached at start."""
    engine = engine_for(url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        upgrade(engine)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise Unavailable(f"db {where}: cannot open the registry database ({reason})") from None
    except FailedPrecondition as exc:
        engine.dispose()
        raise FailedPrecondition(f"db {where}: {exc}") from None
    return engine


def alembic_config(url: str = "") -> Config:
    """Alembic's configuration built in code; the scripts ship inside the package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Apply the migrations up to `revision` in one transaction; a no-op when already there.

    On PostgreSQL an advisory lock held for the transaction serialises replicas starting together.
    """
    config = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        _check_not_newer(conn)
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def _check_not_newer(conn: sa.Connection) -> None:
    """Refuse a database a newer ortserve migrated (a replica of the previous release restarting
    in a rolling upgrade), naming both revisions, instead of Alembic's own error."""
    from alembic.runtime.migration import MigrationContext

    found = MigrationContext.configure(conn).get_current_revision()
    if found is not None and found not in known_revisions():
        raise FailedPrecondition(
            f"the registry database is at revision {found}, newer than this ortserve "
            f"(head {head_revision()}): run the newest ortserve"
        )


def current_revision(engine: sa.Engine) -> str | None:
    """The migration the database is at, None before the first."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    """The newest migration this ortserve ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "ortserve ships its migrations"
    return head


def known_revisions() -> frozenset[str]:
    """Every migration this ortserve ships."""
    from alembic.script import ScriptDirectory

    return frozenset(s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions())


def database_revision(engine: sa.Engine) -> str | None:
    """The database's revision in one SELECT; None when it has no ortserve schema yet.
    Unavailable when the database cannot be reached."""
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.InterfaceError) as exc:
        if _lacks_version_table(engine):
            return None
        raise Unavailable(logged("the registry database is unavailable; retry later", exc)) from exc


def _lacks_version_table(engine: sa.Engine) -> bool:
    try:
        with engine.connect() as conn:
            return not sa.inspect(conn).has_table("alembic_version")
    except sa.exc.DBAPIError:
        return False


def check_at_head(engine: sa.Engine, action: str) -> None:
    """Refuse `action` (destructive maintenance such as `db gc`) unless the database is at exactly
    this ortserve's head: a newer schema may reference blobs this code does not know about, an
    older one lacks columns this code reads."""
    found, head = database_revision(engine), head_revision()
    if found == head:
        return
    at = f"the registry database is at revision {found or 'none (no ortserve schema)'}"
    if found is not None and found not in known_revisions():
        raise FailedPrecondition(
            f"{at}, newer than this ortserve (head {head}): run {action} with the newest ortserve"
        )
    raise FailedPrecondition(
        f"{at}, older than this ortserve (head {head}): run `ortserve db upgrade` first, then {action}"
    )
