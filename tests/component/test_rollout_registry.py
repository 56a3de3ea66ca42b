"""Aliases, traffic policies, shadows and retirement on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ortserve.errors import FailedPrecondition, InvalidInput, NotFound
from ortserve.records import (
    PRODUCTION,
    AliasRecord,
    AuditEventRecord,
    TrafficEntry,
    TrafficPolicy,
    VersionState,
)
from ortserve.registry.db import current_revision, make_engine, upgrade
from ortserve.registry.service import Registry
from ortserve.store.file import FileStore
from tests import registry_workers

SPAWN = mp.get_context("spawn")
ROOT = Path(__file__).resolve().parents[2]
HEAD = "0003"
ALIAS_RULE = "use 1 to 64 characters from a-z, 0-9, '.', '_' and '-', starting with a letter"


@pytest.fixture
def importable_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """`spawn` children import this module by name: they inherit this sys.path."""
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


def _registry(engine: sa.Engine, store_root: Path) -> Registry:
    return Registry(
        engine,
        FileStore(store_root),
        max_model_bytes=1 << 30,
        validate=registry_workers.validate_in_process,
    )


@pytest.fixture
def reg(engine: sa.Engine, tmp_path: Path, linear_path: Path) -> Registry:
    """A registry holding versions 1, 2 and 3 of model 'm' and version 1 of model 'other'."""
    registry = _registry(engine, tmp_path / "store")
    for _ in range(3):
        registry.register_file(linear_path, "m")
    registry.register_file(linear_path, "other")
    return registry


def _change(
    reg: Registry, action: str, change: Callable[[], Any], *, model: str = "m"
) -> tuple[Any, AuditEventRecord]:
    """Run one change; check it bumped the revision once and wrote one audit event of `action`."""
    revision = reg.revision()
    count = len(reg.audit_events(limit=10_000))
    result = change()
    assert reg.revision() == revision + 1
    events = reg.audit_events(limit=10_000)
    assert len(events) == count + 1
    event = events[0]
    assert (event.action, event.model) == (action, model)
    return result, event


def _unchanged(reg: Registry, error: type[Exception], message: str, change: Callable[[], Any]) -> None:
    """The change fails with exactly `message` and leaves revision and audit log as they were."""
    revision = reg.revision()
    count = len(reg.audit_events(limit=10_000))
    with pytest.raises(error) as info:
        change()
    assert str(info.value) == message
    assert reg.revision() == revision
    assert len(reg.audit_events(limit=10_000)) == count


def _alias(reg: Registry, name: str = PRODUCTION, model: str = "m") -> tuple[int, int | None]:
    found = [a for a in reg.aliases(model) if a.name == name]
    assert len(found) == 1
    return found[0].version, found[0].previous_version


# -- aliases ------------------------------------------------------------------------------------


def test_promote_rollback_and_roll_forward(reg: Registry) -> None:
    assert reg.aliases("m") == []
    record, event = _change(reg, "promote", lambda: reg.promote("m", 1, actor="alice"))
    assert isinstance(record, AliasRecord)
    assert (record.model, record.name, record.version, record.previous_version) == ("m", PRODUCTION, 1, None)
    assert record.updated_by == "alice" and record.updated_at.utcoffset() is not None
    assert (event.actor, event.version, event.before) == ("alice", 1, None)
    assert event.after == {"alias": PRODUCTION, "version": 1, "previous_version": None}

    record, event = _change(reg, "promote", lambda: reg.promote("m", 2, actor="bob"))
    assert (record.version, record.previous_version, record.updated_by) == (2, 1, "bob")
    assert event.before == {"alias": PRODUCTION, "version": 1, "previous_version": None}
    assert event.after == {"alias": PRODUCTION, "version": 2, "previous_version": 1}

    record, event = _change(reg, "rollback", lambda: reg.rollback("m", actor="carol"))
    assert (record.version, record.previous_version) == (1, 2)
    assert (event.actor, event.version) == ("carol", 1)
    assert event.before == {"alias": PRODUCTION, "version": 2, "previous_version": 1}
    assert event.after == {"alias": PRODUCTION, "version": 1, "previous_version": 2}

    record, event = _change(reg, "rollback", lambda: reg.rollback("m"))  # rolls forward again
    assert (record.version, record.previous_version) == (2, 1)
    assert event.after == {"alias": PRODUCTION, "version": 2, "previous_version": 1}

    # Pointing an alias at its current version keeps the previous version.
    record, event = _change(reg, "promote", lambda: reg.promote("m", 2))
    assert (record.version, record.previous_version) == (2, 1)
    assert event.before == event.after

    record, event = _change(reg, "alias.set", lambda: reg.set_alias("m", "canary", 3, actor="dave"))
    assert (record.name, record.version, record.previous_version) == ("canary", 3, None)
    record, _ = _change(reg, "promote", lambda: reg.promote("m", 3, "canary"))
    assert (record.version, record.previous_version) == (3, None)
    assert [(a.name, a.version, a.previous_version) for a in reg.aliases("m")] == [
        ("canary", 3, None),
        (PRODUCTION, 2, 1),
    ]
    assert reg.get_alias("m", "canary").updated_by == ""
    assert reg.aliases("other") == []


def test_alias_errors(reg: Registry) -> None:
    _unchanged(reg, NotFound, "model 'nope' is not registered", lambda: reg.promote("nope", 1))
    _unchanged(
        reg, NotFound, "model 'm' has no version 9; versions: 1, 2, 3", lambda: reg.set_alias("m", "a", 9)
    )
    reg.promote("m", 1)
    _unchanged(
        reg,
        FailedPrecondition,
        "alias 'production' of model 'm' has no previous version to roll back to",
        lambda: reg.rollback("m"),
    )
    _unchanged(
        reg,
        NotFound,
        "model 'm' has no alias 'canary'; aliases: production",
        lambda: reg.rollback("m", "canary"),
    )
    _unchanged(
        reg, NotFound, "model 'other' has no alias 'production'; aliases: none", lambda: reg.rollback("other")
    )
    _unchanged(
        reg, NotFound, "model 'm' has no alias 'x'; aliases: production", lambda: reg.get_alias("m", "x")
    )
    _unchanged(reg, NotFound, "model 'nope' is not registered", lambda: reg.aliases("nope"))
    reg.retire("m", 3)
    _unchanged(
        reg,
        FailedPrecondition,
        "version 3 of model 'm' is retired and cannot be the target of alias 'canary'",
        lambda: reg.set_alias("m", "canary", 3),
    )
    _unchanged(
        reg,
        FailedPrecondition,
        "version 3 of model 'm' is retired and cannot be the target of alias 'production'",
        lambda: reg.promote("m", 3),
    )


def test_rollback_to_a_retired_version_is_refused(reg: Registry) -> None:
    reg.promote("m", 1)
    reg.promote("m", 2)
    reg.retire("m", 1)  # the previous version is not a reference: retiring it is allowed
    _unchanged(
        reg,
        FailedPrecondition,
        "version 1 of model 'm' is retired and cannot be rolled back to by alias 'production'",
        lambda: reg.rollback("m"),
    )
    assert _alias(reg) == (2, 1)


@pytest.mark.parametrize(
    "name", ["", "Production", "1", "42", "3a", "-x", ".x", "_x", "a b", "a/b", "é", "a" * 65]
)
def test_bad_alias_names(reg: Registry, name: str) -> None:
    message = f"alias name {name!r} is not valid: {ALIAS_RULE}"
    _unchanged(reg, InvalidInput, message, lambda: reg.set_alias("m", name, 1))
    _unchanged(reg, InvalidInput, message, lambda: reg.promote("m", 1, name))
    _unchanged(reg, InvalidInput, message, lambda: reg.rollback("m", name))
    _unchanged(reg, InvalidInput, message, lambda: reg.delete_alias("m", name))


@pytest.mark.parametrize("name", ["a", "canary", "canary-2", "v1.2_x", "a" * 64])
def test_good_alias_names(reg: Registry, name: str) -> None:
    assert reg.set_alias("m", name, 2).name == name
    assert _alias(reg, name) == (2, None)


def test_delete_alias(reg: Registry) -> None:
    reg.promote("m", 1)
    reg.set_alias("m", "canary", 2)
    reg.set_traffic("m", [TrafficEntry(PRODUCTION, 9), TrafficEntry("canary", 1)])
    for alias in (PRODUCTION, "canary"):
        _unchanged(
            reg,
            FailedPrecondition,
            f"alias {alias!r} of model 'm' is used by the traffic policy; "
            "change the policy before deleting the alias",
            lambda alias=alias: reg.delete_alias("m", alias),  # type: ignore[misc]
        )
    reg.set_traffic("m", [TrafficEntry(PRODUCTION, 1)])
    reg.set_shadow("m", "canary", 0.5)
    _unchanged(
        reg,
        FailedPrecondition,
        "alias 'canary' of model 'm' is used as the shadow target; "
        "change the policy before deleting the alias",
        lambda: reg.delete_alias("m", "canary"),
    )
    reg.set_shadow("m", "", 0)
    result, event = _change(reg, "alias.delete", lambda: reg.delete_alias("m", "canary", actor="eve"))
    assert result is None
    assert (event.actor, event.version, event.after) == ("eve", 2, None)
    assert event.before == {"alias": "canary", "version": 2, "previous_version": None}
    assert [a.name for a in reg.aliases("m")] == [PRODUCTION]
    _unchanged(
        reg,
        NotFound,
        "model 'm' has no alias 'canary'; aliases: production",
        lambda: reg.delete_alias("m", "canary"),
    )
    # A deleted alias starts afresh: no previous version.
    assert reg.set_alias("m", "canary", 3).previous_version is None


# -- traffic and shadow -------------------------------------------------------------------------


def test_set_traffic(reg: Registry) -> None:
    assert reg.traffic_policy("m") is None
    reg.promote("m", 1)
    entries = [TrafficEntry("production", 90), TrafficEntry("02", 10), TrafficEntry("3", 0)]
    policy, event = _change(
        reg, "traffic.set", lambda: reg.set_traffic("m", entries, sticky=True, actor="ann")
    )
    expected = TrafficPolicy(
        model="m",
        entries=(TrafficEntry("production", 90), TrafficEntry("2", 10), TrafficEntry("3", 0)),
        sticky=True,
    )
    assert policy == expected
    assert reg.traffic_policy("m") == expected
    assert (event.actor, event.version, event.before) == ("ann", None, None)
    assert event.after == {
        "entries": [
            {"target": "production", "weight": 90},
            {"target": "2", "weight": 10},
            {"target": "3", "weight": 0},
        ],
        "sticky": True,
        "shadow_target": "",
        "shadow_share": 0.0,
    }
    policy, event = _change(reg, "traffic.set", lambda: reg.set_traffic("m", [TrafficEntry("1", 1)]))
    assert policy == TrafficPolicy(model="m", entries=(TrafficEntry("1", 1),))
    assert event.before == expected_view(expected)
    assert event.after == {
        "entries": [{"target": "1", "weight": 1}],
        "sticky": False,
        "shadow_target": "",
        "shadow_share": 0.0,
    }
    # No entries and no shadow: the policy is gone.
    policy, event = _change(reg, "traffic.set", lambda: reg.set_traffic("m", [], sticky=True))
    assert policy == TrafficPolicy(model="m")
    assert reg.traffic_policy("m") is None
    assert event.after is None and event.before is not None
    assert reg.traffic_policy("other") is None


def expected_view(policy: TrafficPolicy) -> dict[str, Any]:
    return {
        "entries": [{"target": e.target, "weight": e.weight} for e in policy.entries],
        "sticky": policy.sticky,
        "shadow_target": policy.shadow_target,
        "shadow_share": policy.shadow_share,
    }


def test_traffic_errors(reg: Registry) -> None:
    reg.promote("m", 1)
    reg.retire("m", 3)
    cases: list[tuple[type[Exception], str, list[TrafficEntry]]] = [
        (NotFound, "model 'm' has no version 7; versions: 1, 2, 3", [TrafficEntry("7", 1)]),
        (NotFound, "model 'm' has no alias 'canary'; aliases: production", [TrafficEntry("canary", 1)]),
        (
            FailedPrecondition,
            "version 3 of model 'm' is retired and cannot be traffic target '3'",
            [TrafficEntry("1", 1), TrafficEntry("3", 1)],
        ),
        (
            InvalidInput,
            "traffic weight of target '2' of model 'm' must be >= 0, got -1",
            [TrafficEntry("1", 5), TrafficEntry("2", -1)],
        ),
        (
            InvalidInput,
            "traffic weights of model 'm' sum to 0; at least one weight must be positive",
            [TrafficEntry("1", 0), TrafficEntry("production", 0)],
        ),
        (
            InvalidInput,
            "traffic target '1' of model 'm' appears more than once; give each target one entry",
            [TrafficEntry("1", 1), TrafficEntry("2", 1), TrafficEntry("01", 1)],
        ),
        (
            InvalidInput,
            "traffic target 'Prod!' of model 'm' is neither a version number nor an alias name",
            [TrafficEntry("Prod!", 1)],
        ),
        (
            InvalidInput,
            "traffic weight of target '1' of model 'm' must be an integer, got 0.5",
            [TrafficEntry("1", 0.5)],  # type: ignore[arg-type]
        ),
        (
            InvalidInput,
            "traffic weight of target '1' of model 'm' must be an integer, got True",
            [TrafficEntry("1", True)],
        ),
    ]
    for error, message, entries in cases:
        _unchanged(reg, error, message, lambda entries=entries: reg.set_traffic("m", entries))  # type: ignore[misc]
    _unchanged(reg, NotFound, "model 'nope' is not registered", lambda: reg.set_traffic("nope", []))
    assert reg.traffic_policy("m") is None


def test_shadow(reg: Registry) -> None:
    reg.set_alias("m", "candidate", 3)
    policy, event = _change(reg, "shadow.set", lambda: reg.set_shadow("m", "candidate", 0.25, actor="sam"))
    assert policy == TrafficPolicy(model="m", shadow_target="candidate", shadow_share=0.25)
    assert (event.actor, event.before) == ("sam", None)
    assert event.after == {"entries": [], "sticky": False, "shadow_target": "candidate", "shadow_share": 0.25}
    reg.set_traffic("m", [TrafficEntry("1", 1)], sticky=True)
    policy, event = _change(reg, "shadow.set", lambda: reg.set_shadow("m", "2", 1))
    assert policy == TrafficPolicy(
        model="m", entries=(TrafficEntry("1", 1),), sticky=True, shadow_target="2", shadow_share=1.0
    )
    assert event.before is not None and event.before["shadow_target"] == "candidate"
    # Removing the weighted part keeps the shadow.
    policy, _ = _change(reg, "traffic.set", lambda: reg.set_traffic("m", []))
    assert policy == TrafficPolicy(model="m", shadow_target="2", shadow_share=1.0)
    assert reg.traffic_policy("m") == policy
    # Share 0 or an empty target clears the shadow; with nothing left the policy is gone.
    policy, event = _change(reg, "shadow.set", lambda: reg.set_shadow("m", "2", 0))
    assert policy == TrafficPolicy(model="m")
    assert reg.traffic_policy("m") is None and event.after is None
    reg.set_traffic("m", [TrafficEntry("1", 1)])
    reg.set_shadow("m", "2", 0.5)
    policy, _ = _change(reg, "shadow.set", lambda: reg.set_shadow("m", "", 0.5))
    assert policy == TrafficPolicy(model="m", entries=(TrafficEntry("1", 1),))
    assert reg.traffic_policy("m") == policy


def test_shadow_errors(reg: Registry) -> None:
    reg.retire("m", 3)
    for share in (1.5, -0.1):
        _unchanged(
            reg,
            InvalidInput,
            f"shadow share of model 'm' must be in (0, 1], got {share}",
            lambda share=share: reg.set_shadow("m", "1", share),  # type: ignore[misc]
        )
    for share in (float("nan"), float("inf")):
        _unchanged(
            reg,
            InvalidInput,
            f"shadow share of model 'm' must be a number in (0, 1], got {share!r}",
            lambda share=share: reg.set_shadow("m", "1", share),  # type: ignore[misc]
        )
    _unchanged(
        reg,
        NotFound,
        "model 'm' has no alias 'candidate'; aliases: none",
        lambda: reg.set_shadow("m", "candidate", 0.5),
    )
    _unchanged(
        reg, NotFound, "model 'm' has no version 8; versions: 1, 2, 3", lambda: reg.set_shadow("m", "8", 0.5)
    )
    _unchanged(
        reg,
        FailedPrecondition,
        "version 3 of model 'm' is retired and cannot be shadow target '3'",
        lambda: reg.set_shadow("m", "3", 0.5),
    )
    _unchanged(
        reg,
        InvalidInput,
        "shadow target 'x y' of model 'm' is neither a version number nor an alias name",
        lambda: reg.set_shadow("m", "x y", 0.5),
    )
    assert reg.traffic_policy("m") is None


# -- retirement ---------------------------------------------------------------------------------


def test_retire_is_blocked_by_references(reg: Registry) -> None:
    reg.promote("m", 1)
    reg.set_traffic("m", [TrafficEntry("production", 1), TrafficEntry("2", 1)])
    reg.set_shadow("m", "3", 0.1)
    blocked = [
        (1, "version 1 of model 'm' is used by alias 'production'"),
        (2, "version 2 of model 'm' is used by the traffic policy"),
        (3, "version 3 of model 'm' is used as the shadow target"),
    ]
    for version, message in blocked:
        _unchanged(reg, FailedPrecondition, message, lambda v=version: reg.retire("m", v))  # type: ignore[misc]
        _unchanged(
            reg,
            FailedPrecondition,
            message,
            lambda v=version: reg.set_state("m", v, VersionState.RETIRED),  # type: ignore[misc]
        )
    # FAILED is not a reference question.
    assert reg.set_state("m", 1, VersionState.FAILED, "oom").state is VersionState.FAILED
    reg.set_state("m", 1, VersionState.REGISTERED)

    reg.set_shadow("m", "", 0)
    record, event = _change(reg, "retire", lambda: reg.retire("m", 3, actor="rita"))
    assert record.state is VersionState.RETIRED and reg.get_version("m", 3).state is VersionState.RETIRED
    assert (event.actor, event.version) == ("rita", 3)
    assert event.before == {"state": "registered", "error": ""}
    assert event.after == {"state": "retired", "error": ""}

    reg.set_traffic("m", [TrafficEntry("production", 1)])
    reg.retire("m", 2)
    reg.set_traffic("m", [])
    _unchanged(
        reg,
        FailedPrecondition,
        "version 1 of model 'm' is used by alias 'production'",
        lambda: reg.retire("m", 1),
    )
    _unchanged(reg, NotFound, "model 'm' has no version 5; versions: 1, 2, 3", lambda: reg.retire("m", 5))
    _unchanged(reg, NotFound, "model 'nope' is not registered", lambda: reg.retire("nope", 1))
    reg.delete_alias("m", PRODUCTION)
    assert reg.retire("m", 1).state is VersionState.RETIRED
    assert reg.all_versions()[0].model == "other"


# -- snapshot -----------------------------------------------------------------------------------


def test_routes_snapshot(reg: Registry) -> None:
    empty = reg.routes()
    assert (empty.revision, dict(empty.aliases), dict(empty.policies)) == (reg.revision(), {}, {})
    reg.promote("m", 1)
    reg.promote("m", 2)
    reg.set_alias("m", "canary", 3)
    reg.promote("other", 1)
    reg.set_traffic("m", [TrafficEntry("production", 95), TrafficEntry("canary", 5)], sticky=True)
    reg.set_shadow("other", "1", 0.5)
    snapshot = reg.routes()
    assert snapshot.revision == reg.revision()
    assert {m: dict(a) for m, a in snapshot.aliases.items()} == {
        "m": {"canary": 3, "production": 2},
        "other": {"production": 1},
    }
    assert dict(snapshot.policies) == {
        "m": TrafficPolicy(
            model="m",
            entries=(TrafficEntry("production", 95), TrafficEntry("canary", 5)),
            sticky=True,
        ),
        "other": TrafficPolicy(model="other", shadow_target="1", shadow_share=0.5),
    }
    assert reg.routes() == snapshot  # nothing changed, same snapshot
    reg.rollback("m")
    after = reg.routes()
    assert after.revision == snapshot.revision + 1 and after.aliases["m"]["production"] == 1


def test_audit_trail_lists_every_rollout_change(reg: Registry) -> None:
    reg.promote("m", 1, actor="a")
    reg.promote("m", 2, actor="a")
    reg.rollback("m", actor="b")
    reg.set_alias("m", "canary", 3, actor="c")
    reg.set_traffic("m", [TrafficEntry("production", 1), TrafficEntry("canary", 1)], actor="d")
    reg.set_shadow("m", "2", 0.5, actor="e")
    reg.set_traffic("m", [], actor="f")
    reg.set_shadow("m", "", 0, actor="f")
    reg.delete_alias("m", "canary", actor="g")
    reg.retire("m", 3, actor="h")
    events = reg.audit_events("m", limit=100)
    assert [(e.action, e.actor, e.version) for e in events[:10]] == [
        ("retire", "h", 3),
        ("alias.delete", "g", 3),
        ("shadow.set", "f", None),
        ("traffic.set", "f", None),
        ("shadow.set", "e", None),
        ("traffic.set", "d", None),
        ("alias.set", "c", 3),
        ("rollback", "b", 1),
        ("promote", "a", 2),
        ("promote", "a", 1),
    ]
    # Each policy event's before is the previous policy event's after.
    policy_events = [e for e in reversed(events) if e.action in ("traffic.set", "shadow.set")]
    assert policy_events[0].before is None and policy_events[-1].after is None
    for earlier, later in itertools.pairwise(policy_events):
        assert later.before == earlier.after
    assert reg.revision() == 4 + 10


# -- migrations ---------------------------------------------------------------------------------


def test_head_migration_matches_the_orm(engine: sa.Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from ortserve.registry.orm import Base

    upgrade(engine)
    assert current_revision(engine) == HEAD
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_upgrade_from_0001_keeps_existing_models(db_url: str, tmp_path: Path, linear_path: Path) -> None:
    engine = make_engine(db_url)
    try:
        # Rows as 0001 held them: written at head (the ORM has later columns), then migrated down.
        upgrade(engine)
        old = _registry(engine, tmp_path / "store")
        before = [old.register_file(linear_path, "m", created_by="old") for _ in range(2)]
        old.set_state("m", 1, VersionState.FAILED, "x")
        revision = old.revision()
        _downgrade(engine, "0001")
        assert current_revision(engine) == "0001"
        upgrade(engine)
        assert current_revision(engine) == HEAD
        reg = _registry(engine, tmp_path / "store")
        assert reg.revision() == revision
        assert [v.version for v in reg.list_versions("m")] == [1, 2]
        assert reg.get_version("m", 2) == before[1]
        assert reg.aliases("m") == [] and reg.traffic_policy("m") is None
        assert reg.routes().revision == revision
        assert reg.promote("m", 2).version == 2
        assert reg.set_traffic("m", [TrafficEntry("production", 1)]).entries == (
            TrafficEntry("production", 1),
        )
        assert reg.revision() == revision + 2
        assert len(reg.audit_events("m")) == 5
    finally:
        engine.dispose()


def _downgrade(engine: sa.Engine, revision: str) -> None:
    from alembic import command

    from ortserve.registry.db import alembic_config

    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def test_downgrade_to_0001_drops_the_rollout_tables(engine: sa.Engine) -> None:
    _downgrade(engine, "0001")
    assert current_revision(engine) == "0001"
    tables = set(sa.inspect(engine).get_table_names())
    assert "aliases" not in tables and "traffic_policies" not in tables and "models" in tables
    upgrade(engine)
    assert current_revision(engine) == HEAD


# -- concurrency --------------------------------------------------------------------------------


def promote_many(url: str, store_root: str, versions: list[int], start_at: float) -> list[int]:
    """Promote each of `versions` of model 'm' in turn once the clock reaches `start_at` (a child)."""
    engine = make_engine(url)
    registry = _registry(engine, Path(store_root))
    time.sleep(max(0.0, start_at - time.time()))
    try:
        return [registry.promote("m", v, actor=f"pid-{os.getpid()}").version for v in versions]
    finally:
        engine.dispose()


@pytest.mark.usefixtures("importable_tests")
def test_concurrent_promotes_from_processes(db_url: str, reg: Registry, tmp_path: Path) -> None:
    processes, each = 4, 10
    revision = reg.revision()
    start_at = time.time() + 3.0
    plans = [[1 + (p + i) % 3 for i in range(each)] for p in range(processes)]
    with ProcessPoolExecutor(max_workers=processes, mp_context=SPAWN) as pool:
        futures = [
            pool.submit(promote_many, db_url, str(tmp_path / "store"), plan, start_at) for plan in plans
        ]
        assert [f.result(timeout=240) for f in futures] == plans
    assert reg.revision() == revision + processes * each
    events = [e for e in reversed(reg.audit_events("m", limit=1000)) if e.action == "promote"]
    assert len(events) == processes * each
    assert len({e.actor for e in events}) == processes
    assert all(sum(e.actor == actor for e in events) == each for actor in {e.actor for e in events})
    # Serialised read-modify-writes: every event starts from the state the one before it left.
    assert events[0].before is None
    for earlier, later in itertools.pairwise(events):
        assert later.before == earlier.after
        assert later.before is not None and later.after is not None
        moved = later.after["version"] != later.before["version"]
        expected_previous = later.before["version"] if moved else later.before["previous_version"]
        assert later.after["previous_version"] == expected_previous
    final = reg.get_alias("m", PRODUCTION)
    assert events[-1].after == {
        "alias": PRODUCTION,
        "version": final.version,
        "previous_version": final.previous_version,
    }
