"""Rollout results of the SDK (aliases, traffic, shadow, audit, events) and their request builders,
shared by `Client` and `AsyncClient`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb

STATE_NAMES = {v: k.removeprefix("VERSION_STATE_").lower() for k, v in mpb.VersionState.items()}


@dataclass(frozen=True, slots=True)
class AliasInfo:
    name: str
    version: int
    # 0 when the alias never pointed elsewhere.
    previous_version: int
    updated_by: str


@dataclass(frozen=True, slots=True)
class TrafficInfo:
    """Weights by target (version number or alias), stickiness and the shadow."""

    weights: dict[str, int]
    sticky: bool
    shadow_target: str
    shadow_share: float


@dataclass(frozen=True, slots=True)
class ShadowInfo:
    shadow_version: int
    compared: int
    errors: int
    max_abs_diff: float
    argmax_agreement: float


@dataclass(frozen=True, slots=True)
class AuditEntry:
    time: datetime
    actor: str
    action: str
    model: str
    version: int
    before: Any
    after: Any


@dataclass(frozen=True, slots=True)
class ModelEvent:
    kind: str
    model: str
    version: int
    state: str
    detail: str
    revision: int


def alias_of(a: mpb.Alias) -> AliasInfo:
    return AliasInfo(a.name, a.version, a.previous_version, a.updated_by)


def traffic_of(p: mpb.TrafficPolicy) -> TrafficInfo:
    return TrafficInfo({e.target: e.weight for e in p.entries}, p.sticky, p.shadow_target, p.shadow_share)


def shadow_of(s: mpb.ShadowReport) -> ShadowInfo:
    return ShadowInfo(s.shadow_version, s.compared, s.errors, s.max_abs_diff, s.argmax_agreement)


def audit_of(e: mpb.AuditEvent) -> AuditEntry:
    return AuditEntry(
        e.time.ToDatetime(), e.actor, e.action, e.model, e.version, _parse(e.before), _parse(e.after)
    )


def event_of(e: mpb.ModelEvent) -> ModelEvent:
    return ModelEvent(e.kind, e.model, e.version, STATE_NAMES.get(e.state, ""), e.detail, e.revision)


def traffic_request(name: str, weights: Mapping[str | int, int], sticky: bool) -> rpb.SetTrafficPolicyRequest:
    entries = [mpb.TrafficEntry(target=str(target), weight=weight) for target, weight in weights.items()]
    return rpb.SetTrafficPolicyRequest(name=name, entries=entries, sticky=sticky)


def _parse(text: str) -> Any:
    return json.loads(text) if text else None
