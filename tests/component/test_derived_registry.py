"""Sample inputs, derived versions and profiles in the registry, on real SQLite and PostgreSQL, with
real validation, derivation and profiling subprocesses."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from ortserve.errors import FailedPrecondition, InvalidInput, NotFound
from ortserve.records import VersionState
from ortserve.registry.db import current_revision, make_engine, upgrade
from ortserve.registry.service import Registry
from ortserve.store.file import FileStore
from ortserve.toolkit.recipes import Gate, Optimize, Quantize
from ortserve.toolkit.samples import from_npz, to_npz

ROWS = 6


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Iterator[sa.Engine]:
    url = str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))
    engine = make_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def registry(engine: sa.Engine, tmp_path: Path) -> Registry:
    return Registry(engine, FileStore(tmp_path / "store"), max_model_bytes=1 << 30)


@pytest.fixture
def sqlite_registry(sqlite_url: str, tmp_path: Path) -> Iterator[Registry]:
    """For tests of derivation itself, which the database does not change."""
    engine = make_engine(sqlite_url)
    upgrade(engine)
    yield Registry(engine, FileStore(tmp_path / "store"), max_model_bytes=1 << 30)
    engine.dispose()


def _samples(rows: int = ROWS, width: int = 16) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((rows, width)).astype(np.float32)}


def _blobs(registry: Registry) -> set[str]:
    return {b.sha256 for b in registry.store.blobs()}


def test_samples_are_stored_with_the_version_and_kept_by_garbage_collection(
    registry: Registry, linear_path: Path
) -> None:
    samples = _samples()
    record = registry.register_file(linear_path, "m", samples=samples)
    assert record.sample_rows == ROWS
    assert record.samples_sha256 == hashlib.sha256(to_npz(samples)).hexdigest()
    assert record.derived_from is None and record.recipe is None and record.report is None
    assert registry.get_version("m", 1) == record
    stored = from_npz(registry.store.local_path(record.samples_sha256), "stored samples")
    np.testing.assert_array_equal(stored["x"], samples["x"])
    assert registry.audit_events("m")[0].after["sample_rows"] == ROWS  # type: ignore[index]
    # `ortserve db gc` keeps the samples of every version, retired ones included.
    registry.retire("m", 1)
    assert registry.referenced_blobs() == {record.sha256, record.samples_sha256}
    assert registry.collect_garbage(blob_grace_s=0) == []
    assert _blobs(registry) == {record.sha256, record.samples_sha256}


def test_samples_that_do_not_match_the_signature_register_nothing(
    registry: Registry, linear_path: Path
) -> None:
    with pytest.raises(InvalidInput, match=r"sample inputs.*input 'x'.*\[6, 8\]"):
        registry.register_file(linear_path, "m", samples=_samples(width=8))
    with pytest.raises(InvalidInput, match=r"sample inputs.*'y'"):
        registry.register_file(linear_path, "m", samples={"y": _samples()["x"]})
    assert registry.list_models() == ([], "")
    assert _blobs(registry) == set() and list(registry.store.tmp.iterdir()) == []
    assert registry.register_file(linear_path, "m", samples=_samples()).sample_rows == ROWS


def test_derived_version_records_its_source_recipe_report_and_samples(
    registry: Registry, linear_path: Path
) -> None:
    source = registry.register_file(
        linear_path, "m", labels={"team": "a"}, samples=_samples(), created_by="alice"
    )
    derived = registry.derive("m", 1, Quantize(mode="dynamic"), gate=Gate(max_abs_diff=1.0), actor="bob")
    assert (derived.version, derived.derived_from, derived.recipe) == (2, 1, Quantize(mode="dynamic"))
    assert derived.report is not None and derived.report.gate == Gate(max_abs_diff=1.0)
    assert derived.report.samples == "given" and derived.report.sample_rows == ROWS
    assert derived.report.outputs[0].name == "y" and derived.report.outputs[0].max_abs_diff < 1.0
    assert (derived.samples_sha256, derived.sample_rows) == (source.samples_sha256, ROWS)
    assert derived.labels == {"team": "a"} and derived.created_by == "bob"
    assert derived.description == "quantize dynamic of version 1"
    assert derived.sha256 != source.sha256 and Path(derived.path).is_file()
    assert registry.get_version("m", 2) == derived
    event = registry.audit_events("m")[0]
    assert (event.action, event.actor, event.version) == ("derive", "bob", 2)
    assert event.after is not None and event.after["derived_from"] == 1
    assert event.after["recipe"]["kind"] == "quantize"


def test_gate_refusal_and_bad_requests_register_nothing(sqlite_registry: Registry, linear_path: Path) -> None:
    sqlite_registry.register_file(linear_path, "m", samples=_samples())
    before = (_blobs(sqlite_registry), sqlite_registry.revision())
    with pytest.raises(FailedPrecondition, match=r"output 'y' max abs diff .* exceeds --max-abs-diff 1e-09"):
        sqlite_registry.derive("m", 1, Quantize(mode="dynamic"), gate=Gate(max_abs_diff=1e-9))
    wrong = {"x": np.zeros((4, 15), np.float32)}
    with pytest.raises(InvalidInput, match=r"calibration inputs.*input 'x'.*\[4, 15\]"):
        sqlite_registry.derive("m", 1, Quantize(mode="static"), calibration=wrong)
    with pytest.raises(InvalidInput, match="calibration inputs are used by static quantization only"):
        sqlite_registry.derive("m", 1, Optimize(), calibration=_samples())
    with pytest.raises(NotFound, match="version 9"):
        sqlite_registry.derive("m", 9, Optimize())
    assert (_blobs(sqlite_registry), sqlite_registry.revision()) == before
    assert [v.version for v in sqlite_registry.list_versions("m")] == [1]


def test_toolkit_limits_are_the_configured_ones(sqlite_url: str, tmp_path: Path, linear_path: Path) -> None:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    store = FileStore(tmp_path / "store")
    limits = {"job_timeout_s": 0.01}
    registry = Registry(engine, store, max_model_bytes=1 << 30, job_memory_bytes=300 << 20, **limits)
    registry.register_file(linear_path, "m")
    with pytest.raises(InvalidInput, match=r"derivation \(optimize extended\) timed out after 0.01 s"):
        registry.derive("m", 1, Optimize())
    assert registry._job_limits(registry.get_version("m", 1)).memory_bytes == 300 << 20
    assert [v.version for v in registry.list_versions("m")] == [1]
    engine.dispose()


def test_static_quantization_records_the_calibration_it_used(
    sqlite_registry: Registry, linear_path: Path
) -> None:
    source = sqlite_registry.register_file(linear_path, "m", samples=_samples())
    calibration = _samples(rows=8)
    given = sqlite_registry.derive("m", 1, Quantize(mode="static", per_channel=True), calibration=calibration)
    assert given.recipe == Quantize(
        mode="static",
        per_channel=True,
        calibration_sha256=hashlib.sha256(to_npz(calibration)).hexdigest(),
        calibration_rows=8,
    )
    assert given.report is not None and given.report.gate is None
    # Without calibration inputs it calibrates on the samples; the server sets the recorded fields.
    stored = sqlite_registry.derive("m", 2, Quantize(mode="static", calibration_sha256="forged"))
    assert stored.recipe == Quantize(
        mode="static", calibration_sha256=source.samples_sha256, calibration_rows=ROWS
    )
    assert stored.derived_from == 2 and stored.samples_sha256 == source.samples_sha256


def test_a_retired_source_is_refused(sqlite_registry: Registry, linear_path: Path) -> None:
    sqlite_registry.register_file(linear_path, "m")
    sqlite_registry.register_file(linear_path, "m")
    sqlite_registry.retire("m", 1)
    with pytest.raises(FailedPrecondition, match="version 1 of model 'm' is retired"):
        sqlite_registry.derive("m", 1, Optimize())
    assert sqlite_registry.get_version("m", 1).state is VersionState.RETIRED


def test_profile_uses_the_stored_samples(sqlite_registry: Registry, linear_path: Path) -> None:
    sqlite_registry.register_file(linear_path, "m", samples=_samples())
    profile = sqlite_registry.profile("m", 1, batch_size=4, runs=3)
    assert profile.operators and profile.operators[0].calls == 3
    assert sum(o.share for o in profile.operators) == pytest.approx(1.0)
    assert profile.mean_run_ms > 0 and profile.trace.startswith(b"[")
    with pytest.raises(InvalidInput, match="runs is 1001"):
        sqlite_registry.profile("m", 1, runs=1001)


def test_upgrade_from_0002_keeps_versions_and_gives_them_no_samples(
    sqlite_url: str, linear_path: Path
) -> None:
    from alembic import command

    from ortserve.registry.db import alembic_config

    engine = make_engine(sqlite_url)
    try:
        upgrade(engine)
        registry = Registry(engine, FileStore(linear_path.parent / "store"), max_model_bytes=1 << 30)
        record = registry.register_file(linear_path, "m")
        config = alembic_config()
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0002")
        columns = {c["name"] for c in sa.inspect(engine).get_columns("model_versions")}
        assert "samples_sha256" not in columns and "derived_from" not in columns
        upgrade(engine)
        assert current_revision(engine) == "0003"
        assert registry.get_version("m", 1) == record
        assert (record.samples_sha256, record.sample_rows, record.derived_from) == ("", 0, None)
    finally:
        engine.dispose()
