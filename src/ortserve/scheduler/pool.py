"""Loaded versions: one shared session each, with state, warm-up, draining and routing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import structlog

from ortserve.errors import FailedPrecondition, ModelNotReady, NotFound, OrtserveError
from ortserve.registry.records import ModelVersionRecord, VersionState
from ortserve.runtime.session import OrtSession, SessionDefaults, create_session
from ortserve.runtime.warmup import sample_feeds
from ortserve.scheduler.batcher import Batcher, BatcherConfig
from ortserve.scheduler.observer import NullObserver, VersionObserver
from ortserve.scheduler.stats import VersionStats

log = structlog.get_logger(__name__)
DRAIN_TIMEOUT_S = 30.0


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

    @property
    def key(self) -> tuple[str, int]:
        return self.record.model, self.record.version

    def enter(self) -> None:
        self.inflight += 1
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
    ) -> None:
        self._executor = executor
        self._defaults = defaults
        self._observe = observe
        self._models: dict[str, dict[int, VersionSlot]] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}

    def sync(self, records: Iterable[ModelVersionRecord]) -> list[VersionSlot]:
        """Add versions the registry has and this server does not; return the new slots."""
        added = []
        for record in records:
            versions = self._models.setdefault(record.model, {})
            slot = versions.get(record.version)
            if slot is None:
                observer = self._observe(record.model, record.version)
                versions[record.version] = slot = VersionSlot(record, drained=_set_event(), observer=observer)
                added.append(slot)
            else:
                slot.record = record
        return added

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

    def resolve(self, model: str, selector: str) -> VersionSlot:
        """The READY version `selector` names: a number, or empty for the latest ready version."""
        if selector:
            if not selector.isdigit():
                raise NotFound(f"model {model!r} has no version {selector!r}; a version is a positive number")
            slot = self.slot(model, int(selector))
            if slot.state is not VersionState.READY:
                raise ModelNotReady(_not_ready(slot))
            return slot
        ready = [s for s in self.versions(model) if s.state is VersionState.READY]
        if not ready:
            raise ModelNotReady(f"model {model!r} has no version ready on this server")
        return ready[-1]

    async def load(self, model: str, version: int) -> VersionSlot:
        """Create the session, warm it up, then let it take traffic; FAILED with the reason otherwise."""
        slot = self.slot(model, version)
        async with self._lock(slot.key):
            if slot.state is VersionState.READY:
                return slot
            slot.state, slot.error = VersionState.LOADING, ""
            try:
                session = await asyncio.to_thread(create_session, slot.record, self._defaults)
                await self._warm_up(slot, session)
            except OrtserveError as exc:
                slot.state, slot.error = VersionState.FAILED, str(exc)
                log.warning("model_load_failed", model=model, version=version, error=slot.error)
                raise FailedPrecondition(slot.error) from exc
            self._activate(slot, session)
        return slot

    async def _warm_up(self, slot: VersionSlot, session: OrtSession) -> None:
        feeds = sample_feeds(slot.record.signature)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, session.run, feeds, None, None)
        except Exception as exc:  # any ORT failure on a well-formed input means the version is unusable
            raise FailedPrecondition(
                f"model {slot.record.model!r} version {slot.record.version} failed its warm-up: {exc}"
            ) from exc

    def _activate(self, slot: VersionSlot, session: OrtSession) -> None:
        slot.session = session
        slot.stats = VersionStats()
        record = slot.record
        slot.batcher = Batcher(
            session,
            self._executor,
            slot.stats,
            batcher_config(record),
            name=f"model {record.model!r} version {record.version}",
            observer=slot.observer,
        )
        slot.batcher.start()
        slot.state = VersionState.READY
        log.info(
            "model_ready", model=slot.record.model, version=slot.record.version, providers=session.providers
        )

    async def unload(self, model: str, version: int) -> None:
        """Stop routing to the version, let its in-flight requests finish, then drop the session."""
        slot = self.slot(model, version)
        async with self._lock(slot.key):
            if slot.state is not VersionState.READY:
                return
            slot.state = VersionState.REGISTERED
            try:
                await asyncio.wait_for(slot.drained.wait(), DRAIN_TIMEOUT_S)
            except TimeoutError:
                log.warning("drain_timeout", model=model, version=version, inflight=slot.inflight)
            if slot.batcher is not None:
                await slot.batcher.aclose()
            slot.session, slot.batcher = None, None
            log.info("model_unloaded", model=model, version=version)

    async def aclose(self) -> None:
        for slot in self.slots():
            await self.unload(*slot.key)

    def _versions(self, model: str) -> dict[int, VersionSlot]:
        try:
            return self._models[model]
        except KeyError:
            raise NotFound(f"model {model!r} is not registered") from None

    def _lock(self, key: tuple[str, int]) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())


DEFAULT_MAX_BATCH_SIZE = 64


def batcher_config(record: ModelVersionRecord) -> BatcherConfig:
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
    )


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


def _not_ready(slot: VersionSlot) -> str:
    model, version = slot.key
    reason = f": {slot.error}" if slot.error else ""
    return f"model {model!r} version {version} is {slot.state.value}, not ready on this server{reason}"
