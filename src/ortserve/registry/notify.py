"""Hear registry changes the moment another replica commits them: PostgreSQL LISTEN.

NOTIFY is a wake-up, not a queue: a listener that is disconnected misses what happens meanwhile.
So a notification only makes the control plane refresh now instead of at its next poll, and the
poll (one row, the revision) stays as the fallback: on SQLite, and while the listener reconnects.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import sqlalchemy as sa
import structlog

from ortserve.registry.repository import CHANGES_CHANNEL

log = structlog.get_logger(__name__)
RECONNECT_S = (0.1, 0.5, 1.0, 2.0, 5.0)  # waits between reconnection attempts, the last repeated


def listen_url(engine: sa.Engine) -> str | None:
    """The libpq URL a listener connects with, or None where the database has no LISTEN."""
    if engine.dialect.name != "postgresql":
        return None
    url = engine.url.set(drivername="postgresql")
    query = dict(url.query)
    query.setdefault("application_name", f"ortserve-listen-{os.getpid()}")
    return url.set(query=query).render_as_string(hide_password=False)


async def listen(url: str, wake: Callable[[], None], on_error: Callable[[str], None]) -> None:
    """Call `wake` for every change notification, reconnecting for ever; cancel to stop.

    `wake` is also called after each (re)connection, since changes may have been missed."""
    import psycopg

    failures = 0
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                failures = 0
                log.info("registry_listening", channel=CHANGES_CHANNEL)
                wake()
                async for _ in conn.notifies():
                    wake()
        except psycopg.Error as exc:
            on_error(type(exc).__name__)
            log.warning("registry_listen_failed", error=str(exc).strip()[:200], retry_s=_wait(failures))
        await asyncio.sleep(_wait(failures))
        failures += 1


def _wait(failures: int) -> float:
    return RECONNECT_S[min(failures, len(RECONNECT_S) - 1)]
