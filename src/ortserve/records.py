"""Frozen value records shared by registry/, runtime/, scheduler/ and server/ (versions, settings,
provider specs, rollout state). Imports neither registry/ nor runtime/; nothing outside registry/ sees
ORM objects."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

import numpy as np

from ortserve.errors import InvalidInput
from ortserve.signature import Signature
from ortserve.toolkit.recipes import Recipe
from ortserve.toolkit.report import EvaluationReport

GRAPH_LEVELS = ("disable", "basic", "extended", "all")
EXECUTION_MODES = ("sequential", "parallel")


class VersionState(enum.StrEnum):
    """Stored states are REGISTERED, FAILED and RETIRED; LOADING and READY are per server."""

    REGISTERED = "registered"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One execution provider with its options, in order of preference."""

    name: str
    options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProviderSpec:
        return cls(data["name"], MappingProxyType(dict(data.get("options", {}))))


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchingSettings:
    """Dynamic batching of one version. `max_batch_size` None: on when the model has a batch axis."""

    max_batch_size: int | None = None
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024
    max_concurrent_batches: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size is not None and self.max_batch_size < 0:
            raise InvalidInput(f"batching.max_batch_size must be >= 0, got {self.max_batch_size}")
        if not 0 <= self.max_queue_delay_us <= 10_000_000:
            raise InvalidInput(
                f"batching.max_queue_delay_us must be in 0..10000000, got {self.max_queue_delay_us}"
            )
        if self.max_queue_size < 1:
            raise InvalidInput(f"batching.max_queue_size must be >= 1, got {self.max_queue_size}")
        if not 1 <= self.max_concurrent_batches <= 64:
            raise InvalidInput(
                f"batching.max_concurrent_batches must be in 1..64, got {self.max_concurrent_batches}"
            )
        if any(size < 1 for size in self.preferred_batch_sizes):
            raise InvalidInput(
                f"batching.preferred_batch_sizes must be >= 1, got {self.preferred_batch_sizes}"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "max_batch_size": self.max_batch_size,
            "max_queue_delay_us": self.max_queue_delay_us,
            "preferred_batch_sizes": list(self.preferred_batch_sizes),
            "max_queue_size": self.max_queue_size,
            "max_concurrent_batches": self.max_concurrent_batches,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BatchingSettings:
        data = dict(data)
        data["preferred_batch_sizes"] = tuple(data.get("preferred_batch_sizes", ()))
        return cls(**data)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionSettings:
    """ONNX Runtime session options of one version; 0 threads means the server's default."""

    graph_optimization_level: str = "all"
    intra_op_num_threads: int = 0
    inter_op_num_threads: int = 0
    execution_mode: str = "sequential"
    enable_mem_pattern: bool = True
    enable_cpu_mem_arena: bool = True

    def __post_init__(self) -> None:
        if self.graph_optimization_level not in GRAPH_LEVELS:
            raise InvalidInput(
                f"session.graph_optimization_level must be one of {', '.join(GRAPH_LEVELS)}, "
                f"got {self.graph_optimization_level!r}"
            )
        if self.execution_mode not in EXECUTION_MODES:
            raise InvalidInput(
                f"session.execution_mode must be one of {', '.join(EXECUTION_MODES)}, "
                f"got {self.execution_mode!r}"
            )
        for name in ("intra_op_num_threads", "inter_op_num_threads"):
            value = getattr(self, name)
            if not 0 <= value <= 256:
                raise InvalidInput(f"session.{name} must be in 0..256, got {value}")

    def to_json(self) -> dict[str, Any]:
        return {
            "graph_optimization_level": self.graph_optimization_level,
            "intra_op_num_threads": self.intra_op_num_threads,
            "inter_op_num_threads": self.inter_op_num_threads,
            "execution_mode": self.execution_mode,
            "enable_mem_pattern": self.enable_mem_pattern,
            "enable_cpu_mem_arena": self.enable_cpu_mem_arena,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SessionSettings:
        return cls(**data)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelVersionRecord:
    """One stored version. `path` is the model file in the content-addressed store."""

    model: str
    version: int
    sha256: str
    size_bytes: int
    opset: int
    producer: str
    signature: Signature
    providers: tuple[ProviderSpec, ...]
    batching: BatchingSettings
    session: SessionSettings
    state: VersionState
    error: str
    description: str
    labels: Mapping[str, str]
    created_by: str
    created_at: datetime
    path: str
    # The version this one was derived from, how, and its comparison with it (None: uploaded).
    derived_from: int | None = None
    recipe: Recipe | None = None
    report: EvaluationReport | None = None
    # The sample inputs stored with the version: their .npz blob in the store ("" and 0: none).
    samples_sha256: str = ""
    sample_rows: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRecord:
    name: str
    description: str
    created_at: datetime
    versions: tuple[ModelVersionRecord, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """What a registration declares before its bytes arrive."""

    name: str
    size_bytes: int
    sha256: str
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    providers: tuple[ProviderSpec, ...] = ()
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    session: SessionSettings = field(default_factory=SessionSettings)
    created_by: str = ""
    # Sample inputs, one array per model input with rows on axis 0; checked against the signature.
    samples: Mapping[str, np.ndarray] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEventRecord:
    """One registry change: who did what to which model version, with the state before and after."""

    at: datetime
    actor: str
    action: str
    model: str
    version: int | None
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None


PRODUCTION = "production"


@dataclass(frozen=True, slots=True)
class TrafficEntry:
    """A share of a model's traffic: `target` is a version number ("3") or an alias name."""

    target: str
    weight: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficPolicy:
    """How requests without a version selector are spread; optionally copied to a shadow."""

    model: str
    entries: tuple[TrafficEntry, ...] = ()
    sticky: bool = False
    # Version number or alias that receives a copy of `shadow_share` of the requests; "" for none.
    shadow_target: str = ""
    shadow_share: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AliasRecord:
    model: str
    name: str
    version: int
    # What the alias pointed to before its last change; Rollback returns to it.
    previous_version: int | None
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteSnapshot:
    """Every alias and traffic policy at one registry revision: what replicas route by."""

    revision: int
    aliases: Mapping[str, Mapping[str, int]]  # model -> alias -> version
    policies: Mapping[str, TrafficPolicy]  # model -> policy
