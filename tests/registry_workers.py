"""Entry points of the OS processes the registry tests start (importable by `spawn` children)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import sqlalchemy as sa

from ortserve.registry.db import make_engine
from ortserve.registry.service import Registry
from ortserve.runtime.validation import ModelInfo, ValidationLimits, check_model_file
from ortserve.store.file import FileStore


def validate_in_process(path: Path, _limits: ValidationLimits) -> ModelInfo:
    """The real checks without the subprocess, for tests that register many trusted models."""
    return check_model_file(path)


def register_many(
    url: str, store_root: str, model: str, name: str, *, count: int, start_at: float
) -> list[int]:
    """Register `model` `count` times as `name` once the clock reaches `start_at`; the version numbers."""
    engine = make_engine(url)
    registry = Registry(engine, FileStore(store_root), max_model_bytes=1 << 30, validate=validate_in_process)
    time.sleep(max(0.0, start_at - time.time()))
    try:
        return [
            registry.register_file(Path(model), name, created_by=f"pid-{os.getpid()}").version
            for _ in range(count)
        ]
    finally:
        engine.dispose()


def register_then_die_before_commit(url: str, store_root: str, model: str, name: str) -> None:
    """Register `model`, but SIGKILL this process just before the database transaction commits."""
    engine = make_engine(url)
    registry = Registry(engine, FileStore(store_root), max_model_bytes=1 << 30, validate=validate_in_process)

    @sa.event.listens_for(engine, "commit")
    def _die(_conn: sa.Connection) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    registry.register_file(Path(model), name)
    raise AssertionError("the process should have been killed before the commit")


def upgrade_at(url: str, start_at: float) -> str | None:
    """Apply the migrations once the clock reaches `start_at`; the revision the database is at."""
    from ortserve.registry.db import current_revision, upgrade

    engine = make_engine(url)
    time.sleep(max(0.0, start_at - time.time()))
    try:
        upgrade(engine)
        return current_revision(engine)
    finally:
        engine.dispose()
