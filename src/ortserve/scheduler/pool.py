"""Loaded versions: one shared session each, with state, warm-up, routing, draining and eviction.

A version takes traffic only once it is READY here: loaded, then warmed up. Versions that aliases
or the traffic policy reference, and each model's latest version, stay resident; others load on
demand and are evicted least recently used when the memory budget is exceeded.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import structlog

from ortserve.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    ModelNotReady,
    NotFound,
    OrtserveError,
    logged,
)
from ortserve.faults import crash_point
from ortserve.records import ModelVersionRecord, RouteSnapshot, VersionState
from ortserve.runtime.session import OrtSession, SessionDefaults, create_session
from ortserve.runtime.warmup import sample_feeds
from ortserve.scheduler.batcher import Batcher, BatcherConfig
from ortserve.scheduler.events import EventBus
from ortserve.scheduler.in_flight import InFlight
from ortserve.scheduler.observer import NullObserver, VersionObserver
from ortserve.scheduler.routing import NO_ROUTES, ModelRoutes, choose
from ortserve.scheduler.stats import VersionStats

if TYPE_CHECKING:
    from pathlib import Path

    from opentelemetry.trace import Tracer

    from ortserve.scheduler.tracing import BatchTracer

log = structlog.get_logger(__name__)
DRAIN_TIMEOUT_S = 30.0
RETRY_BASE_S = 1.0
RETRY_MAX_S = 300.0
DEFAULT_MAX_BATCH_SIZE = 64
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(slots=True)
class VersionSlot:
    """One version as this server sees it."""

    record: ModelVersionRecord
    state: VersionState = VersionState.REGISTERED
    error: str = ""
    session: OrtSession | None = None
    batcher: Batcher | None = None
    observer: VersionObserver = field(default_factory=NullObserver)
    stats: VersionStats = field(default_factory=VersionStats)
    inflight: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    memory_bytes: int = 0
    last_used: float = 0.0
    # The load in progress, shared by everyone who waits for it; after a failure, the monotonic
    # time before which nobody may try again (doubling per consecutive failure).
    loading: asyncio.Future[None] | None = None
    failures: int = 0
    retry_at: float = 0.0

    @property
    def key(self) -> tuple[str, int]:
        return self.record.model, self.record.version

    def enter(self) -> None:
        self.inflight += 1
        self.last_used = time.monotonic()
        self.drained.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.drained.set()


class ModelPool:
    """Every registered version known to this server; READY ones hold a session and a batcher."""

    def __init__(
        self,
        executor: Executor,
        defaults: SessionDefaults,
        observe: Callable[[str, int], VersionObserver] = lambda model, version: NullObserver(),
        *,
        memory_budget_bytes: int = 0,
        inline_compute_us: int = 0,
        events: EventBus | None = None,
        clock: Callable[[], float] = time.monotonic,
        blob_path: Callable[[ModelVersionRecord], AbstractContextManager[str | Path]] = (
            lambda record: nullcontext(record.path)
        ),
        tracer: Tracer | None = None,
        in_flight: InFlight | None = None,
    ) -> None:
        self._clock = clock
        self.in_flight = in_flight  # the server's inference calls, for the batchers' idle path
        self._tracer = tracer  # OpenTelemetry, when tracing is configured
        # The model file of a version on this machine, fetched from the model store where needed
        # and kept (pinned in the blob cache) while the session reads it; blocking, so it runs in a
        # thread of its load.
        self._blob_path = blob_path
        self._executor = executor
        self._defaults = defaults
        self._observe = observe
        self._budget = memory_budget_bytes
        self._inline_compute_us = inline_compute_us
        self.events = events or EventBus()
        self._models: dict[str, dict[int, VersionSlot]] = {}
        self._snapshot = RouteSnapshot(revision=0, aliases={}, policies={})
        self._routes: Mapping[str, ModelRoutes] = {}
        self._load_lock = asyncio.Lock()

    # --- the registry's view -------------------------------------------------------------

    def sync(self, records: Iterable[ModelVersionRecord]) -> tuple[list[VersionSlot], list[VersionSlot]]:
        """Match the registry's versions: return the slots added and those whose versions are gone."""
        seen: set[tuple[str, int]] = set()
        added = []
        for record in records:
            seen.add((record.model, record.version))
            versions = self._models.setdefault(record.model, {})
            slot = versions.get(record.version)
            if slot is None:
                observer = self._observe(record.model, record.version)
                versions[record.version] = slot = VersionSlot(record, drained=_set(), observer=observer)
                added.append(slot)
            else:
                slot.record = record
        gone = [slot for slot in self.slots() if slot.key not in seen]
        return added, gone

    @property
    def snapshot(self) -> RouteSnapshot:
        """The registry's aliases and policies as last set (before warm-then-switch)."""
        return self._snapshot

    def set_routes(self, snapshot: RouteSnapshot) -> None:
        self._snapshot = snapshot
        self._apply_routes()

    def _apply_routes(self) -> None:
        """Warm, then switch: an alias keeps its old target here until its new one is READY."""
        snapshot = self._snapshot
        routes = {}
        for model in set(snapshot.aliases) | set(snapshot.policies):
            current = self.routes(model).aliases
            effective = {}
            for name, version in snapshot.aliases.get(model, {}).items():
                warm = _ready(self._models.get(model, {}).get(version))
                effective[name] = version if warm or name not in current else current[name]
            routes[model] = ModelRoutes(MappingProxyType(effective), snapshot.policies.get(model))
        self._routes = routes

    def routes(self, model: str) -> ModelRoutes:
        return self._routes.get(model, NO_ROUTES)

    def resident(self) -> set[tuple[str, int]]:
        """Versions that must stay loaded: referenced by aliases or policies (the registry's and the
        ones still serving here), and each model's latest."""
        keep = set()
        snapshot = self._snapshot
        for model, versions in self._models.items():
            if versions:
                keep.add((model, max(versions)))
            wanted = ModelRoutes(snapshot.aliases.get(model, {}), snapshot.policies.get(model))
            for version in wanted.referenced() | self.routes(model).referenced():
                if version in versions:
                    keep.add((model, version))
        return keep

    # --- lookups ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, model: str) -> list[VersionSlot]:
        return [v for _, v in sorted(self._versions(model).items())]

    def slots(self) -> list[VersionSlot]:
        return [slot for name in self.names() for slot in self.versions(name)]

    def slot(self, model: str, version: int) -> VersionSlot:
        versions = self._versions(model)
        try:
            return versions[version]
        except KeyError:
            known = ", ".join(str(v) for v in sorted(versions)) or "none"
            raise NotFound(f"model {model!r} has no version {version}; versions: {known}") from None

    def route(self, model: str, selector: str, routing_key: str = "") -> VersionSlot:
        """The slot a request goes to; pinned selectors may name a version not loaded yet."""
        versions = self._versions(model)
        version = choose(
            model,
            selector,
            self.routes(model),
            ready=lambda v: _ready(versions.get(v)),
            latest_ready=lambda: _latest(versions),
            routing_key=routing_key,
        )
        if version is None:
            raise ModelNotReady(f"model {model!r} has no version ready on this server")
        return self.slot(model, version)

    def resolve(self, model: str, selector: str) -> VersionSlot:
        """The READY version `selector` names, without loading anything."""
        slot = self.route(model, selector)
        if slot.state is not VersionState.READY:
            raise ModelNotReady(_not_ready(slot))
        return slot

    async def ready(self, slot: VersionSlot, deadline: float | None) -> VersionSlot:
        """Wait for a pinned version to load (loading it on demand) within the request's deadline."""
        if slot.state is VersionState.READY:
            return slot
        if slot.state in (VersionState.FAILED, VersionState.RETIRED):
            raise ModelNotReady(_not_ready(slot))
        timeout = None if deadline is None else deadline - time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(self.load(*slot.key)), timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"model {slot.key[0]!r} version {slot.key[1]} did not load in time"
            ) from None
        except FailedPrecondition as exc:
            raise ModelNotReady(str(exc)) from None
        return slot

    # --- loading, unloading, eviction ----------------------------------------------------

    async def load(self, model: str, version: int) -> VersionSlot:
        """Create the session, warm it up, then let it take traffic; FAILED with the reason otherwise.

        Concurrent callers share one load of a version. After a failure, further loads of it are
        refused until its backoff has passed (1 s, doubling per consecutive failure, at most
        5 min), so requests waiting on a broken version cannot start a reload each.
        """
        slot = self.slot(model, version)
        if slot.state is VersionState.READY:
            return slot
        if slot.loading is None:
            _check_not_retired(slot)
            self._check_backoff(slot)
            slot.loading = asyncio.ensure_future(self._load(slot))
            slot.loading.add_done_callback(_retrieve)
        await asyncio.shield(slot.loading)
        return slot

    def _check_backoff(self, slot: VersionSlot) -> None:
        if slot.state is not VersionState.FAILED:
            return
        wait = slot.retry_at - self._clock()
        if wait > 0:
            model, version = slot.key
            raise FailedPrecondition(
                f"model {model!r} version {version} failed to load {slot.failures} time(s); "
                f"the next attempt is allowed in {wait:.1f} s: {slot.error}"
            )

    async def _load(self, slot: VersionSlot) -> None:
        """One load, run one at a time across versions so each one's memory can be measured."""
        model, version = slot.key
        try:
            async with self._load_lock:
                _check_not_retired(slot)
                slot.state, slot.error = VersionState.LOADING, ""
                self.events.publish("loading", model, version, slot.state)
                before = _rss()
                try:
                    session = await asyncio.to_thread(self._create_session, slot.record)
                    crash_point(f"load:{model}:{version}")  # test-only: see ortserve.faults
                    await self._warm_up(slot, session)
                except OrtserveError as exc:
                    self._failed(slot, str(exc))
                    raise FailedPrecondition(slot.error) from exc
                slot.memory_bytes = max(_rss() - before, slot.record.size_bytes)
                _check_not_retired(slot)  # retired while loading: drop the session, never serve it
                slot.failures = 0
                self._activate(slot, session)
        finally:
            slot.loading = None
        await self.evict(protect=slot.key)

    def _create_session(self, record: ModelVersionRecord) -> OrtSession:
        with self._blob_path(record) as path:
            return create_session(record, self._defaults, str(path))

    def _failed(self, slot: VersionSlot, error: str) -> None:
        model, version = slot.key
        slot.state, slot.error = VersionState.FAILED, error
        slot.failures += 1
        slot.retry_at = self._clock() + min(RETRY_BASE_S * 2 ** (slot.failures - 1), RETRY_MAX_S)
        log.warning("model_load_failed", model=model, version=version, error=error, failures=slot.failures)
        self.events.publish("failed", model, version, slot.state, error)

    async def _warm_up(self, slot: VersionSlot, session: OrtSession) -> None:
        feeds = sample_feeds(slot.record.signature)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, session.run, feeds, None, None)
        except Exception as exc:  # any ORT failure on a well-formed input means the version is unusable
            record = slot.record  # ONNX Runtime's text (source paths, node internals) goes to the log only
            message = f"model {record.model!r} version {record.version} failed its warm-up in ONNX Runtime"
            raise FailedPrecondition(logged(f"{message} ({type(exc).__name__})", exc)) from exc

    def _activate(self, slot: VersionSlot, session: OrtSession) -> None:
        record = slot.record
        slot.session = session
        slot.stats = VersionStats()
        slot.batcher = Batcher(
            session,
            None,
            slot.stats,
            batcher_config(record, self._inline_compute_us),
            name=f"model {record.model!r} version {record.version}",
            observer=slot.observer,
            tracer=self._batch_tracer(record),
            in_flight=self.in_flight,
        )
        slot.last_used = time.monotonic()
        slot.observer.loaded(session.requested, session.providers, session.fallback)
        slot.state = VersionState.READY
        self._apply_routes()
        log.info(
            "model_ready",
            model=record.model,
            version=record.version,
            providers=session.providers,
            memory_bytes=slot.memory_bytes,
        )
        self.events.publish("ready", record.model, record.version, slot.state, ",".join(session.providers))

    def _batch_tracer(self, record: ModelVersionRecord) -> BatchTracer | None:
        if self._tracer is None:
            return None
        from ortserve.scheduler.tracing import BatchTracer

        return BatchTracer(self._tracer, record.model, record.version)

    async def unload(self, model: str, version: int, *, reason: str = "unloaded") -> None:
        """Stop routing to the version, let its in-flight requests finish, then drop the session."""
        slot = self.slot(model, version)
        if slot.state is not VersionState.READY:
            if slot.state is VersionState.FAILED:
                slot.state, slot.error, slot.failures = VersionState.REGISTERED, "", 0
            return
        slot.state = VersionState.REGISTERED
        await self._drain(slot, reason)

    def detach(self, slot: VersionSlot) -> None:
        """The registry no longer has the version (retired): route nothing more to it and forget
        it, at once. `close_retired` then lets its in-flight requests finish, outside any lock."""
        model, version = slot.key
        slot.state = VersionState.RETIRED
        versions = self._models.get(model, {})
        versions.pop(version, None)
        if not versions:  # the last version went: the model is gone, not an empty list
            self._models.pop(model, None)

    async def close_retired(self, slot: VersionSlot) -> None:
        """Drain a detached version, close its session and drop its metric series."""
        if slot.batcher is not None:
            await self._drain(slot, "retired")
        else:
            self.events.publish("retired", *slot.key, slot.state)
        slot.observer.close()

    async def _drain(self, slot: VersionSlot, reason: str) -> None:
        model, version = slot.key
        try:
            await asyncio.wait_for(slot.drained.wait(), DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.warning("drain_timeout", model=model, version=version, inflight=slot.inflight)
        if slot.batcher is not None:
            await slot.batcher.aclose()
        slot.session, slot.batcher, slot.memory_bytes = None, None, 0
        slot.observer.unloaded()
        log.info("model_unloaded", model=model, version=version, reason=reason)
        self.events.publish(reason, model, version, slot.state)

    async def evict(self, protect: tuple[str, int] | None = None) -> None:
        """Unload least recently used versions nobody references while over the memory budget."""
        if not self._budget:
            return
        keep = self.resident() | ({protect} if protect else set())
        loaded = [s for s in self.slots() if s.state is VersionState.READY]
        used = sum(s.memory_bytes for s in loaded)
        for slot in sorted((s for s in loaded if s.key not in keep), key=lambda s: s.last_used):
            if used <= self._budget:
                break
            used -= slot.memory_bytes
            await self.unload(*slot.key, reason="evicted")
        if used > self._budget:
            log.warning("memory_budget_exceeded", used=used, budget=self._budget)

    async def aclose(self) -> None:
        loads = [slot.loading for slot in self.slots() if slot.loading is not None]
        for load in loads:
            load.cancel()
        await asyncio.gather(*loads, return_exceptions=True)
        for slot in self.slots():
            await self.unload(*slot.key)

    def _versions(self, model: str) -> dict[int, VersionSlot]:
        try:
            return self._models[model]
        except KeyError:
            raise NotFound(f"model {model!r} is not registered") from None


def _check_not_retired(slot: VersionSlot) -> None:
    if slot.state is VersionState.RETIRED:
        model, version = slot.key
        raise FailedPrecondition(f"model {model!r} version {version} is retired")


def batcher_config(record: ModelVersionRecord, inline_compute_us: int = 0) -> BatcherConfig:
    """Batching is on by default when axis 0 is a dynamic batch axis, and impossible otherwise."""
    settings = record.batching
    size = settings.max_batch_size
    if size is None:
        size = DEFAULT_MAX_BATCH_SIZE
    if not record.signature.batch_axis:
        size = 0
    return BatcherConfig(
        max_batch_size=size,
        max_queue_delay_us=settings.max_queue_delay_us,
        preferred_batch_sizes=settings.preferred_batch_sizes,
        max_queue_size=settings.max_queue_size,
        max_concurrent_batches=settings.max_concurrent_batches,
        inline_compute_us=inline_compute_us,
    )


def _ready(slot: VersionSlot | None) -> bool:
    return slot is not None and slot.state is VersionState.READY


def _latest(versions: Mapping[int, VersionSlot]) -> int | None:
    ready = [v for v, s in versions.items() if s.state is VersionState.READY]
    return max(ready) if ready else None


def _rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the model's size
        return 0


def _retrieve(load: asyncio.Future[None]) -> None:
    """A shared load's failure counts as seen even when every caller waiting for it went away."""
    if not load.cancelled():
        load.exception()


def _set() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


def _not_ready(slot: VersionSlot) -> str:
    model, version = slot.key
    reason = f": {slot.error}" if slot.error else ""
    return f"model {model!r} version {version} is {slot.state.value}, not ready on this server{reason}"
