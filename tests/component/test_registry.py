"""The registry service on real SQLite and PostgreSQL databases, with real model validation."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import MappingProxyType

import pytest
import sqlalchemy as sa

from ortserve.errors import InvalidInput, NotFound, ResourceExhausted, Unavailable
from ortserve.records import (
    BatchingSettings,
    Manifest,
    ProviderSpec,
    SessionSettings,
    VersionState,
)
from ortserve.registry.db import current_revision, make_engine, upgrade
from ortserve.registry.service import Registry
from ortserve.runtime.validation import ValidationLimits
from ortserve.store.file import FileStore
from tests import onnx_models, registry_workers
from tests.patterns import LOGGED

SPAWN = mp.get_context("spawn")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def importable_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """`spawn` children import `tests.registry_workers` by name: they inherit this sys.path."""
    monkeypatch.syspath_prepend(str(ROOT))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


@pytest.fixture
def registry(engine: sa.Engine, store: FileStore) -> Registry:
    return Registry(engine, store, max_model_bytes=1 << 30)


@pytest.fixture
def fast_registry(engine: sa.Engine, store: FileStore) -> Registry:
    """Validation in this process: for tests that register many trusted models."""
    return Registry(engine, store, max_model_bytes=1 << 30, validate=registry_workers.validate_in_process)


def _manifest(data: bytes, name: str = "m", **changes: object) -> Manifest:
    fields: dict[str, object] = {
        "name": name,
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    fields.update(changes)
    return Manifest(**fields)  # type: ignore[arg-type]


def _assert_empty(registry: Registry) -> None:
    assert registry.revision() == 0
    assert registry.list_models() == ([], "")
    assert registry.all_versions() == []
    assert list(registry.store.tmp.iterdir()) == []


def test_register_round_trip(registry: Registry, linear_path: Path) -> None:
    record = registry.register_file(
        linear_path,
        "linear",
        description="first",
        labels={"team": "search"},
        providers=[ProviderSpec("CUDAExecutionProvider", MappingProxyType({"device_id": "1"}))],
        batching=BatchingSettings(max_batch_size=8, max_queue_delay_us=100),
        session=SessionSettings(intra_op_num_threads=2),
        created_by="alice",
    )
    assert record.model == "linear" and record.version == 1
    assert record.sha256 == hashlib.sha256(linear_path.read_bytes()).hexdigest()
    assert record.size_bytes == linear_path.stat().st_size
    assert (record.opset, record.producer) == (17, "ortserve-tests")
    assert record.signature.batch_axis and record.signature.inputs[0].shape == (-1, 16)
    assert record.state is VersionState.REGISTERED and record.error == ""
    assert Path(record.path).read_bytes() == linear_path.read_bytes()
    assert registry.get_version("linear", 1) == record
    assert registry.list_versions("linear") == [record]
    assert registry.latest_version("linear") == record
    assert registry.all_versions() == [record]
    stored = registry.get_version("linear", 1)
    assert stored.labels == {"team": "search"} and stored.created_by == "alice"
    assert stored.providers[0].options == {"device_id": "1"}
    assert stored.batching.max_batch_size == 8 and stored.session.intra_op_num_threads == 2
    assert stored.created_at.utcoffset() is not None
    model = registry.get_model("linear")
    assert (model.name, model.description, model.versions) == ("linear", "first", (record,))
    assert registry.revision() == 1


def test_versions_revision_state_and_audit(fast_registry: Registry, linear_path: Path) -> None:
    reg = fast_registry
    assert [reg.register_file(linear_path, "m", created_by="bob").version for _ in range(3)] == [1, 2, 3]
    assert reg.revision() == 3
    retired = reg.set_state("m", 3, VersionState.RETIRED, actor="carol")
    assert retired.state is VersionState.RETIRED
    assert reg.revision() == 4
    assert reg.latest_version("m").version == 2
    assert [v.version for v in reg.all_versions()] == [1, 2]
    assert [v.version for v in reg.list_versions("m")] == [1, 2, 3]
    failed = reg.set_state("m", 1, VersionState.FAILED, "it broke")
    assert (failed.state, reg.get_version("m", 1).error) == (VersionState.FAILED, "it broke")
    events = reg.audit_events("m")
    assert [(e.action, e.version, e.actor) for e in events] == [
        ("set_state", 1, ""),
        ("set_state", 3, "carol"),
        ("register", 3, "bob"),
        ("register", 2, "bob"),
        ("register", 1, "bob"),
    ]
    assert events[1].before == {"state": "registered", "error": ""}
    assert events[1].after == {"state": "retired", "error": ""}
    assert events[4].before is None and events[4].after is not None and events[4].after["version"] == 1
    with pytest.raises(InvalidInput, match="state 'ready' is not stored in the registry"):
        reg.set_state("m", 1, VersionState.READY)


def test_not_found_messages(fast_registry: Registry, linear_path: Path) -> None:
    with pytest.raises(NotFound, match=r"^model 'nope' is not registered$"):
        fast_registry.get_model("nope")
    with pytest.raises(NotFound, match=r"^model 'nope' is not registered$"):
        fast_registry.get_version("nope", 1)
    fast_registry.register_file(linear_path, "m")
    fast_registry.register_file(linear_path, "m")
    with pytest.raises(NotFound, match=r"^model 'm' has no version 7; versions: 1, 2$"):
        fast_registry.get_version("m", 7)


@pytest.mark.parametrize("name", ["", "Upper", "-lead", ".lead", "a/b", "../etc", "a b", "x" * 129, "é"])
def test_bad_names_are_rejected(fast_registry: Registry, linear_path: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match=r"^model name .* is not valid: use 1 to 128 characters from a-z"):
        fast_registry.register_file(linear_path, name)
    _assert_empty(fast_registry)


@pytest.mark.parametrize("name", ["a", "resnet-50", "bert.base_v2", "0" * 128])
def test_good_names_are_accepted(fast_registry: Registry, linear_path: Path, name: str) -> None:
    assert fast_registry.register_file(linear_path, name).model == name


def test_manifest_checks(registry: Registry) -> None:
    data = onnx_models.linear()
    with pytest.raises(InvalidInput, match=r"^manifest size_bytes must be > 0, got 0$"):
        registry.begin_upload(_manifest(data, size_bytes=0))
    with pytest.raises(
        ResourceExhausted, match=rf"^model of {1 << 31} bytes exceeds the limit of {1 << 30} bytes$"
    ):
        registry.begin_upload(_manifest(data, size_bytes=1 << 31))
    with pytest.raises(InvalidInput, match=r"^manifest sha256 must be 64 hex characters, got 'abc'$"):
        registry.begin_upload(_manifest(data, sha256="abc"))
    _assert_empty(registry)


def test_size_mismatch(registry: Registry) -> None:
    data = onnx_models.linear()
    manifest = _manifest(data, size_bytes=len(data) + 1)
    upload = registry.begin_upload(manifest)
    upload.write(data)
    with pytest.raises(
        InvalidInput, match=rf"^received {len(data)} bytes but the manifest declared {len(data) + 1}$"
    ):
        registry.finish_upload(upload, manifest)
    upload = registry.begin_upload(_manifest(data, size_bytes=len(data) - 1))
    with pytest.raises(InvalidInput, match=rf"more than the {len(data) - 1} bytes the manifest declared"):
        upload.write(data)
    upload.abort()
    _assert_empty(registry)


def test_sha256_mismatch(registry: Registry) -> None:
    data = onnx_models.linear()
    manifest = _manifest(data, sha256="0" * 64)
    upload = registry.begin_upload(manifest)
    upload.write(data)
    actual = hashlib.sha256(data).hexdigest()
    with pytest.raises(
        InvalidInput, match=rf"^sha256 mismatch: manifest says {'0' * 64}, received bytes hash to {actual}$"
    ):
        registry.finish_upload(upload, manifest)
    _assert_empty(registry)


def test_chunks_over_one_mib_are_rejected(registry: Registry) -> None:
    data = b"\0" * ((1 << 20) + 1)
    upload = registry.begin_upload(_manifest(data))
    with pytest.raises(
        InvalidInput, match=rf"^chunk of {len(data)} bytes exceeds the limit of 1048576 bytes$"
    ):
        upload.write(data)
    upload.abort()
    _assert_empty(registry)


def test_invalid_models_leave_the_registry_intact(
    registry: Registry, tmp_path: Path, linear_path: Path
) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"definitely not onnx")
    with pytest.raises(
        InvalidInput,
        match=r"^model bytes are not a valid ONNX model" + LOGGED,
    ):
        registry.register_file(junk, "junk")
    custom = tmp_path / "custom.onnx"
    custom.write_bytes(onnx_models.custom_domain())
    with pytest.raises(
        InvalidInput, match=r"^operator domain 'com.example.evil' \(node 'Evil'\) is not allowed"
    ):
        registry.register_file(custom, "custom")
    external = tmp_path / "external.onnx"
    onnx_models.external_data(external)
    with pytest.raises(InvalidInput, match=r"keeps its data in the external file 'weights.bin'"):
        registry.register_file(external, "external")
    _assert_empty(registry)
    assert list(registry.store.blob_dir.rglob("*.onnx")) == []
    assert registry.register_file(linear_path, "linear").version == 1


def test_model_over_the_memory_limit_is_invalid(engine: sa.Engine, store: FileStore, tmp_path: Path) -> None:
    registry = Registry(
        engine, store, max_model_bytes=1 << 30, validation_limits=ValidationLimits(memory_bytes=450 << 20)
    )
    big = tmp_path / "big.onnx"
    onnx_models.big_initializer(big, megabytes=128)
    with pytest.raises(InvalidInput, match=r"model validation exceeded its memory limit of 471859200 bytes"):
        registry.register_file(big, "big")
    _assert_empty(registry)
    small = tmp_path / "small.onnx"
    onnx_models.linear(small)
    assert registry.register_file(small, "small").version == 1


def test_pagination(fast_registry: Registry, linear_path: Path) -> None:
    names = ["e", "a", "d", "c", "b"]
    for name in names:
        fast_registry.register_file(linear_path, name)
    seen: list[str] = []
    token = ""
    for _ in range(3):
        page, token = fast_registry.list_models(2, token)
        assert len(page) <= 2
        seen.extend(m.name for m in page)
        assert all(len(m.versions) == 1 for m in page)
    assert (seen, token) == (sorted(names), "")
    page, token = fast_registry.list_models(5, "")
    assert ([m.name for m in page], token) == (sorted(names), "")
    page, token = fast_registry.list_models(0, "")
    assert len(page) == 5 and token == ""
    with pytest.raises(InvalidInput, match=r"^page_token 'garbage!' is not a token returned by list_models$"):
        fast_registry.list_models(2, "garbage!")
    with pytest.raises(InvalidInput, match=r"^page_size must be >= 0, got -1$"):
        fast_registry.list_models(-1)


@pytest.mark.usefixtures("importable_tests")
def test_concurrent_registrations_from_processes(
    db_url: str, engine: sa.Engine, tmp_path: Path, linear_path: Path
) -> None:
    store_root = str(tmp_path / "store")
    start_at = time.time() + 3.0
    with ProcessPoolExecutor(max_workers=4, mp_context=SPAWN) as pool:
        futures = [
            pool.submit(
                registry_workers.register_many,
                db_url,
                store_root,
                str(linear_path),
                "shared",
                count=10,
                start_at=start_at,
            )
            for _ in range(4)
        ]
        per_process = [f.result(timeout=240) for f in futures]
    for versions in per_process:
        assert versions == sorted(versions) and len(versions) == 10
    assert sorted(v for versions in per_process for v in versions) == list(range(1, 41))
    registry = Registry(engine, FileStore(store_root), max_model_bytes=1 << 30)
    assert [v.version for v in registry.list_versions("shared")] == list(range(1, 41))
    assert registry.revision() == 40
    assert len(registry.audit_events("shared", limit=1000)) == 40


@pytest.mark.usefixtures("importable_tests")
def test_kill_before_database_commit_leaves_no_version(
    db_url: str, registry: Registry, linear_path: Path
) -> None:
    child = SPAWN.Process(
        target=registry_workers.register_then_die_before_commit,
        args=(db_url, str(registry.store.root), str(linear_path), "victim"),
    )
    child.start()
    child.join(120)
    assert child.exitcode == -9
    _assert_empty(registry)
    sha = hashlib.sha256(linear_path.read_bytes()).hexdigest()
    assert registry.store.contains(sha)  # the orphan blob of the store commit
    assert [g.location for g in registry.collect_garbage(blob_grace_s=0)] == [
        str(registry.store.path_for(sha))
    ]
    assert registry.register_file(linear_path, "victim").version == 1
    assert registry.collect_garbage(blob_grace_s=0) == []


def test_migrations_twice_are_a_no_op_and_match_the_orm(engine: sa.Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from ortserve.registry.orm import Base

    upgrade(engine)
    upgrade(engine)
    assert current_revision(engine) == "0003"
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        count = conn.execute(sa.text("SELECT count(*) FROM registry_revision")).scalar_one()
    assert diff == []
    assert count == 1


@pytest.mark.usefixtures("importable_tests")
def test_concurrent_first_upgrades(db_url: str) -> None:
    start_at = time.time() + 2.0
    with ProcessPoolExecutor(max_workers=3, mp_context=SPAWN) as pool:
        futures = [pool.submit(registry_workers.upgrade_at, db_url, start_at) for _ in range(3)]
        assert [f.result(timeout=120) for f in futures] == ["0003"] * 3


@pytest.mark.postgres
def test_alembic_version_lands_in_the_search_path_schema(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        upgrade(engine)
        schema = sa.make_url(pg_url).query["options"].split("=", 1)[1]
        with engine.connect() as conn:
            tables = conn.execute(
                sa.text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                {"s": schema},
            ).scalars()
            assert {
                "alembic_version",
                "models",
                "model_versions",
                "registry_revision",
                "audit_events",
            } <= set(tables)
    finally:
        engine.dispose()


def test_unreachable_database_is_unavailable(tmp_path: Path, store: FileStore) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'registry.db'}")
    registry = Registry(engine, store, max_model_bytes=1 << 30)
    with pytest.raises(
        Unavailable,
        match=r"^the registry database is unavailable; retry later" + LOGGED,
    ):
        registry.revision()
    engine.dispose()
