"""Alembic environment. Normally driven by ortserve.registry.db.upgrade, which passes a connection."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from ortserve.registry.orm import Base

config = context.config


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things: let autogenerate and op.batch_alter_table copy tables.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from ortserve.registry.db import make_engine

    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("ortserve migrations run online only (ortserve.registry.db.upgrade)")
run_migrations_online()
