"""Aliases and traffic policies over a caller's Session: validation, queries, records and audit views.

The Registry (service.py) calls these inside one write transaction after `lock_model`, so every
read-modify-write of a model's aliases and policy is serialised: BEGIN IMMEDIATE on SQLite, the
model row held `FOR UPDATE` on PostgreSQL.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ortserve.errors import FailedPrecondition, InvalidInput, NotFound
from ortserve.records import AliasRecord, RouteSnapshot, TrafficEntry, TrafficPolicy, VersionState
from ortserve.registry import repository as repo
from ortserve.registry.orm import Alias, Model, ModelVersion, TrafficPolicyRow

# Starts with a letter, so an alias can never be mistaken for a version number in a selector.
ALIAS_RE = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
VERSION_RE = re.compile(r"^[0-9]{1,18}$")


def check_alias_name(name: str) -> None:
    if not isinstance(name, str) or not ALIAS_RE.match(name):
        raise InvalidInput(
            f"alias name {name!r} is not valid: use 1 to 64 characters from a-z, 0-9, '.', '_' and '-', "
            "starting with a letter"
        )


# -- locking and lookups ------------------------------------------------------------------------


def lock_model(session: Session, name: str) -> Model:
    """The model's row, locked until the transaction ends (FOR UPDATE; a no-op on SQLite)."""
    row = session.scalars(sa.select(Model).where(Model.name == name).with_for_update()).one_or_none()
    if row is None:
        raise NotFound(f"model {name!r} is not registered")
    return row


def find_model(session: Session, name: str) -> Model:
    row = session.scalars(sa.select(Model).where(Model.name == name)).one_or_none()
    if row is None:
        raise NotFound(f"model {name!r} is not registered")
    return row


def version_row(session: Session, model: Model, version: int) -> ModelVersion:
    row = repo.version_row(session, model.id, version)
    if row is None:
        numbers = ", ".join(str(n) for n in repo.version_numbers(session, model.id)) or "none"
        raise NotFound(f"model {model.name!r} has no version {version}; versions: {numbers}")
    return row


def live_version(session: Session, model: Model, version: int, use: str) -> ModelVersion:
    """The version row; FailedPrecondition when retired (`use` says what it was wanted for)."""
    row = version_row(session, model, version)
    if row.state == VersionState.RETIRED.value:
        raise FailedPrecondition(f"version {version} of model {model.name!r} is retired and cannot be {use}")
    return row


def alias_row(session: Session, model: Model, name: str) -> Alias | None:
    stmt = sa.select(Alias).where(Alias.model_id == model.id, Alias.name == name)
    return session.scalars(stmt).one_or_none()


def existing_alias(session: Session, model: Model, name: str) -> Alias:
    row = alias_row(session, model, name)
    if row is None:
        names = ", ".join(a.name for a in alias_rows(session, model)) or "none"
        raise NotFound(f"model {model.name!r} has no alias {name!r}; aliases: {names}")
    return row


def alias_rows(session: Session, model: Model) -> list[Alias]:
    stmt = sa.select(Alias).where(Alias.model_id == model.id).order_by(Alias.name)
    return list(session.scalars(stmt))


def policy_row(session: Session, model: Model) -> TrafficPolicyRow | None:
    stmt = sa.select(TrafficPolicyRow).where(TrafficPolicyRow.model_id == model.id)
    return session.scalars(stmt).one_or_none()


# -- targets and validation ---------------------------------------------------------------------


def resolve_target(session: Session, model: Model, target: str, what: str) -> str:
    """The canonical form of a traffic or shadow target ("3" or an alias name), checked to exist.

    A version must exist and not be retired; an alias must exist. `what` names the target in errors.
    """
    if not isinstance(target, str):
        raise InvalidInput(f"{what} of model {model.name!r} must be a string, got {target!r}")
    if VERSION_RE.match(target):
        number = int(target)
        live_version(session, model, number, f"{what} {target!r}")
        return str(number)
    if ALIAS_RE.match(target):
        existing_alias(session, model, target)
        return target
    raise InvalidInput(
        f"{what} {target!r} of model {model.name!r} is neither a version number nor an alias name"
    )


def check_entries(session: Session, model: Model, entries: Sequence[TrafficEntry]) -> list[dict[str, Any]]:
    """Validated entries as stored: canonical targets, integer weights >= 0 summing to > 0."""
    stored: list[dict[str, Any]] = []
    seen: set[str] = set()
    for entry in entries:
        weight = entry.weight
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise InvalidInput(
                f"traffic weight of target {entry.target!r} of model {model.name!r} must be an integer, "
                f"got {weight!r}"
            )
        if weight < 0:
            raise InvalidInput(
                f"traffic weight of target {entry.target!r} of model {model.name!r} must be >= 0, "
                f"got {weight}"
            )
        target = resolve_target(session, model, entry.target, "traffic target")
        if target in seen:
            raise InvalidInput(
                f"traffic target {target!r} of model {model.name!r} appears more than once; "
                "give each target one entry"
            )
        seen.add(target)
        stored.append({"target": target, "weight": weight})
    if stored and sum(e["weight"] for e in stored) <= 0:
        raise InvalidInput(
            f"traffic weights of model {model.name!r} sum to 0; at least one weight must be positive"
        )
    return stored


def check_share(model: Model, share: float) -> float:
    if isinstance(share, bool) or not isinstance(share, int | float) or not math.isfinite(share):
        raise InvalidInput(f"shadow share of model {model.name!r} must be a number in (0, 1], got {share!r}")
    if not 0 <= share <= 1:
        raise InvalidInput(f"shadow share of model {model.name!r} must be in (0, 1], got {share}")
    return float(share)


def references(session: Session, model: Model, version: int) -> str | None:
    """What routes to `version` directly ("alias 'production'", ...), None when nothing does."""
    for alias in alias_rows(session, model):
        if alias.version == version:
            return f"by alias {alias.name!r}"
    policy = policy_row(session, model)
    if policy is not None:
        if any(e["target"] == str(version) for e in policy.entries):
            return "by the traffic policy"
        if policy.shadow_target == str(version):
            return "as the shadow target"
    return None


def alias_references(session: Session, model: Model, alias: str) -> str | None:
    policy = policy_row(session, model)
    if policy is not None:
        if any(e["target"] == alias for e in policy.entries):
            return "by the traffic policy"
        if policy.shadow_target == alias:
            return "as the shadow target"
    return None


# -- records and audit views --------------------------------------------------------------------


def alias_record(row: Alias, model: str) -> AliasRecord:
    return AliasRecord(
        model=model,
        name=row.name,
        version=row.version,
        previous_version=row.previous_version,
        updated_at=repo.as_utc(row.updated_at),
        updated_by=row.updated_by,
    )


def policy_record(row: TrafficPolicyRow | None, model: str) -> TrafficPolicy:
    if row is None:
        return TrafficPolicy(model=model)
    return TrafficPolicy(
        model=model,
        entries=tuple(TrafficEntry(str(e["target"]), int(e["weight"])) for e in row.entries),
        sticky=row.sticky,
        shadow_target=row.shadow_target,
        shadow_share=row.shadow_share,
    )


def alias_view(row: Alias | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"alias": row.name, "version": row.version, "previous_version": row.previous_version}


def policy_view(row: TrafficPolicyRow | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "entries": [dict(e) for e in row.entries],
        "sticky": row.sticky,
        "shadow_target": row.shadow_target,
        "shadow_share": row.shadow_share,
    }


def is_empty(row: TrafficPolicyRow) -> bool:
    return not row.entries and not row.shadow_target


# -- snapshot -----------------------------------------------------------------------------------


def routes(session: Session) -> RouteSnapshot:
    """The revision, every alias and every policy, read in the caller's (snapshot) transaction."""
    revision = repo.revision(session)
    aliases: dict[str, dict[str, int]] = {}
    stmt = sa.select(Model.name, Alias.name, Alias.version).join(Model).order_by(Model.name, Alias.name)
    for model, name, version in session.execute(stmt):
        aliases.setdefault(model, {})[name] = version
    policies: dict[str, TrafficPolicy] = {}
    for row, model in session.execute(sa.select(TrafficPolicyRow, Model.name).join(Model)):
        policies[model] = policy_record(row, model)
    return RouteSnapshot(
        revision=revision,
        aliases=MappingProxyType({m: MappingProxyType(a) for m, a in aliases.items()}),
        policies=MappingProxyType(policies),
    )
