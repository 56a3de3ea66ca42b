"""What the pages show, read through the control plane: models, versions on this server, rollout
routes, traffic split, shadow comparison and recent rates."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ortserve.console.history import Key, Rates
from ortserve.control import ControlPlane
from ortserve.errors import OrtserveError
from ortserve.records import (
    PRODUCTION,
    AuditEventRecord,
    ModelVersionRecord,
    TrafficPolicy,
)
from ortserve.scheduler.shadow import ShadowStats

MAX_AUDIT_EVENTS = 50


@dataclass(frozen=True, slots=True)
class VersionView:
    number: int
    state: str
    error: str
    provider: str
    memory_bytes: int
    aliases: tuple[str, ...]
    rates: Rates | None
    description: str
    labels: Mapping[str, str]
    created_by: str
    created_at: datetime
    sha256: str
    size_bytes: int
    derived_from: str


@dataclass(frozen=True, slots=True)
class Segment:
    """One part of the traffic bar: `percent` of requests go to `label`."""

    label: str
    percent: int


@dataclass(frozen=True, slots=True)
class ModelView:
    name: str
    description: str
    versions: tuple[VersionView, ...]
    aliases: Mapping[str, int]
    policy: TrafficPolicy | None
    split: tuple[Segment, ...]
    shadow: ShadowStats | None


class Views:
    def __init__(self, control: ControlPlane, shadows: Mapping[str, ShadowStats]) -> None:
        self._control = control
        self._shadows = shadows

    async def models(self, rates: Mapping[Key, Rates]) -> list[ModelView]:
        """Every model with its live versions, from one registry snapshot."""
        records, routes = await asyncio.to_thread(self._control.registry.snapshot)
        by_model: dict[str, list[ModelVersionRecord]] = {}
        for record in records:
            by_model.setdefault(record.model, []).append(record)
        return [
            self._model(
                name,
                "",
                records=versions,
                aliases=routes.aliases.get(name, {}),
                policy=routes.policies.get(name),
                rates=rates,
            )
            for name, versions in sorted(by_model.items())
        ]

    async def model(self, name: str, rates: Mapping[Key, Rates]) -> ModelView:
        """One model with every version, retired ones included; NotFound when it is not registered."""
        registry = self._control.registry
        record = await asyncio.to_thread(registry.get_model, name)
        aliases = await asyncio.to_thread(registry.aliases, name)
        policy = await asyncio.to_thread(registry.traffic_policy, name)
        targets = {a.name: a.version for a in aliases}
        return self._model(
            name, record.description, records=record.versions, aliases=targets, policy=policy, rates=rates
        )

    async def audit(self, name: str) -> list[AuditEventRecord]:
        return await asyncio.to_thread(self._control.registry.audit_events, name, MAX_AUDIT_EVENTS)

    def _model(
        self,
        name: str,
        description: str,
        *,
        records: Sequence[ModelVersionRecord],
        aliases: Mapping[str, int],
        policy: TrafficPolicy | None,
        rates: Mapping[Key, Rates],
    ) -> ModelView:
        versions = tuple(self._version(r, aliases, rates) for r in sorted(records, key=lambda r: r.version))
        split = _split(policy, aliases) or self._default_split(name, aliases)
        return ModelView(name, description, versions, aliases, policy, split, self._shadows.get(name))

    def _version(
        self, record: ModelVersionRecord, aliases: Mapping[str, int], rates: Mapping[Key, Rates]
    ) -> VersionView:
        state, error, providers = self._control.view(record)
        return VersionView(
            number=record.version,
            state=state.value,
            error=error,
            provider=", ".join(providers),
            memory_bytes=self._memory(record),
            aliases=tuple(sorted(a for a, v in aliases.items() if v == record.version)),
            rates=rates.get((record.model, str(record.version))),
            description=record.description,
            labels=record.labels,
            created_by=record.created_by,
            created_at=record.created_at,
            sha256=record.sha256,
            size_bytes=record.size_bytes,
            derived_from=str(getattr(record, "derived_from", None) or ""),
        )

    def _memory(self, record: ModelVersionRecord) -> int:
        try:
            slot = self._control.pool.slot(record.model, record.version)
        except OrtserveError:
            return 0
        return slot.memory_bytes if slot.session is not None else 0

    def _default_split(self, name: str, aliases: Mapping[str, int]) -> tuple[Segment, ...]:
        """Without weights, requests go to production, else to the latest version ready here."""
        if PRODUCTION in aliases:
            return (Segment(f"{PRODUCTION} (v{aliases[PRODUCTION]})", 100),)
        try:
            slot = self._control.pool.route(name, "")
        except OrtserveError:
            return ()
        return (Segment(f"latest (v{slot.record.version})", 100),)


def _split(policy: TrafficPolicy | None, aliases: Mapping[str, int]) -> tuple[Segment, ...]:
    """The policy's weights as whole percentages that add up to 100 (largest remainders first)."""
    if policy is None or not policy.entries:
        return ()
    total = sum(e.weight for e in policy.entries)
    if total <= 0:
        return ()
    exact = [100 * e.weight / total for e in policy.entries]
    whole = [int(x) for x in exact]
    for index in sorted(range(len(exact)), key=lambda i: whole[i] - exact[i])[: 100 - sum(whole)]:
        whole[index] += 1
    return tuple(
        Segment(_target(e.target, aliases), percent)
        for e, percent in zip(policy.entries, whole, strict=True)
        if percent > 0
    )


def _target(target: str, aliases: Mapping[str, int]) -> str:
    return f"{target} (v{aliases[target]})" if target in aliases else f"v{target}"


def audit_text(value: Mapping[str, Any] | None) -> str:
    """An audit record's before/after as short text."""
    if not value:
        return ""
    return ", ".join(f"{k}={v}" for k, v in value.items())
