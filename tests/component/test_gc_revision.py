"""`db gc` on a database whose schema is not this ortserve's head is refused before it lists or
removes anything: a newer schema may reference blobs this code cannot see (an older ortserve would
delete sample blobs), an older one lacks columns this code reads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from ortserve.cli import main
from ortserve.errors import FailedPrecondition
from ortserve.registry.db import head_revision, make_engine, open_registry, upgrade
from ortserve.registry.service import Registry
from ortserve.store.file import FileStore

FUTURE = "9999"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def engine(url: str) -> Iterator[sa.Engine]:
    engine = make_engine(url)
    yield engine
    engine.dispose()


def _registry_with_orphan(engine: sa.Engine, tmp_path: Path) -> tuple[Registry, Path]:
    store = FileStore(tmp_path / "store")
    orphan = store.path_for("ab" * 32)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"a blob only a newer schema knows about")
    return Registry(engine, store, max_model_bytes=1 << 20), orphan


def _set_revision(engine: sa.Engine, revision: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


def test_gc_refuses_a_database_newer_than_the_code(engine: sa.Engine, tmp_path: Path) -> None:
    upgrade(engine)
    registry, orphan = _registry_with_orphan(engine, tmp_path)
    _set_revision(engine, FUTURE)  # what a newer ortserve's migration leaves
    expected = (
        f"the registry database is at revision {FUTURE}, newer than this ortserve "
        f"(head {head_revision()}): run gc with the newest ortserve"
    )
    for dry_run in (True, False):
        with pytest.raises(FailedPrecondition) as caught:
            registry.collect_garbage(blob_grace_s=0, stale_temp_s=0, dry_run=dry_run)
        assert str(caught.value) == expected
    assert orphan.is_file()
    _set_revision(engine, head_revision())
    assert [g.location for g in registry.collect_garbage(blob_grace_s=0)] == [str(orphan)]


def test_gc_refuses_a_database_older_than_the_code(engine: sa.Engine, tmp_path: Path) -> None:
    upgrade(engine, "0002")  # before samples_sha256: gc cannot know every referenced blob
    registry, orphan = _registry_with_orphan(engine, tmp_path)
    with pytest.raises(FailedPrecondition) as caught:
        registry.collect_garbage(blob_grace_s=0)
    assert str(caught.value) == (
        f"the registry database is at revision 0002, older than this ortserve (head {head_revision()}): "
        "run `ortserve db upgrade` first, then gc"
    )
    assert orphan.is_file()
    upgrade(engine)
    assert [g.location for g in registry.collect_garbage(blob_grace_s=0)] == [str(orphan)]


def test_gc_refuses_a_database_without_the_schema(engine: sa.Engine, tmp_path: Path) -> None:
    registry, orphan = _registry_with_orphan(engine, tmp_path)
    refused = r"at revision none \(no ortserve schema\), older .*db upgrade"
    with pytest.raises(FailedPrecondition, match=refused):
        registry.collect_garbage(blob_grace_s=0)
    assert orphan.is_file()


def test_db_gc_command_names_both_revisions_and_removes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert main(["db", "upgrade", "--data-dir", str(data)]) == 0
    engine = make_engine(f"sqlite:///{data / 'registry.db'}")
    try:
        _set_revision(engine, FUTURE)
    finally:
        engine.dispose()
    orphan = FileStore(data / "store").path_for("cd" * 32)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x")
    capsys.readouterr()
    assert main(["db", "gc", "--data-dir", str(data), "--grace", "0"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: the registry database is at revision {FUTURE}, newer than this ortserve "
        f"(head {head_revision()}): run gc with the newest ortserve\n"
    )
    assert orphan.is_file()


def test_an_older_ortserve_refuses_to_start_on_a_newer_database(url: str, engine: sa.Engine) -> None:
    """A replica of the previous release restarting after the migration: one line naming both
    revisions instead of Alembic's error."""
    upgrade(engine)
    _set_revision(engine, FUTURE)
    with pytest.raises(FailedPrecondition) as caught:
        open_registry(url)
    shown = engine.url.render_as_string(hide_password=True)
    assert str(caught.value) == (
        f"db {shown}: the registry database is at revision {FUTURE}, newer than this ortserve "
        f"(head {head_revision()}): run the newest ortserve"
    )
    with engine.connect() as conn:  # nothing was changed
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == FUTURE
