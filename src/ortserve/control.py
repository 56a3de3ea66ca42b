"""The control plane: registry writes, loads and unloads, and convergence with the registry.

Runs beside the hot path. Each server refreshes when PostgreSQL announces a change (LISTEN), and
polls the registry revision (one row) as the fallback, then reconciles: new
versions appear, retired ones are unloaded, aliases and traffic policies are swapped into the
in-memory routes, and every version an alias or policy uses (and each model's latest) is loaded
and warmed before traffic moves to it. Predict reads only the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import structlog

from ortserve.errors import FailedPrecondition, OrtserveError, ResourceExhausted
from ortserve.records import (
    PRODUCTION,
    AliasRecord,
    Manifest,
    ModelVersionRecord,
    RouteSnapshot,
    TrafficEntry,
    TrafficPolicy,
    VersionState,
)
from ortserve.registry.notify import listen
from ortserve.registry.service import Registry
from ortserve.scheduler.pool import ModelPool, VersionSlot
from ortserve.toolkit.profile import Profile
from ortserve.toolkit.recipes import Gate, Recipe

log = structlog.get_logger(__name__)
T = TypeVar("T")


class ControlPlane:
    """Owns the registry and the pool; `on_change` hears about every state change (health)."""

    def __init__(
        self,
        registry: Registry,
        pool: ModelPool,
        *,
        load_on_start: bool,
        poll_interval_s: float = 1.0,
        on_change: Callable[[], Awaitable[None]] | None = None,
        on_poll_failure: Callable[[str], None] = lambda kind: None,
        listen_url: str | None = None,
        max_jobs: int = 2,
    ) -> None:
        # Derivations and profiles hold a thread for minutes: they get threads of their own, never
        # the default executor that registry reads and loads share, and at most `max_jobs` at once.
        self._max_jobs = max_jobs
        self._job_slots = threading.BoundedSemaphore(max_jobs)
        self._poll_failed = on_poll_failure
        self._listen_url = listen_url
        self._listen_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.registry = registry
        self.pool = pool
        self._load_resident = load_on_start
        self._poll_interval_s = poll_interval_s
        self._listener = on_change
        self._revision = -1
        self._refreshing = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._loads: set[asyncio.Task[None]] = set()
        self._drains: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.refresh()
        await self.settle()
        self._poller = asyncio.create_task(self._poll(), name="registry-poll")
        if self._listen_url:
            listener = listen(self._listen_url, self._wake.set, self._poll_failed)
            self._listen_task = asyncio.create_task(listener, name="registry-listen")

    async def aclose(self) -> None:
        for task in (self._listen_task, self._poller):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for task in list(self._loads):
            task.cancel()
        await asyncio.gather(*self._loads, *self._drains, return_exceptions=True)
        await self.pool.aclose()

    async def refresh(self) -> None:
        """Converge on the registry: versions, routes, residency. Loads and the drains of retired
        versions run in the background: the lock is never held across them."""
        async with self._refreshing:
            revision = await asyncio.to_thread(self.registry.revision)
            if revision == self._revision:
                return
            records, routes = await asyncio.to_thread(self.registry.snapshot)
            revision = routes.revision  # what the snapshot shows, which may be newer
            added, gone = self.pool.sync(records)
            self.pool.events.revision = revision
            self._publish(added, routes)
            for slot in gone:
                self.pool.detach(slot)
                _spawn(self._drains, self.pool.close_retired(slot))
            self.pool.set_routes(routes)
            self._revision = revision
            self._load_missing()
        await self._changed()

    def _publish(self, added: list[VersionSlot], routes: RouteSnapshot) -> None:
        events = self.pool.events
        for slot in added:
            events.publish("registered", slot.record.model, slot.record.version, slot.state)
        # Against the registry's previous snapshot, not the routes in effect (which keep an
        # alias's old target until the new one is warm), and over models on either side, so
        # that a deleted alias or a cleared policy is announced too.
        before = self.pool.snapshot
        for model in sorted(set(before.aliases) | set(routes.aliases)):
            aliases = dict(routes.aliases.get(model, {}))
            if aliases != dict(before.aliases.get(model, {})):
                detail = ", ".join(f"{k}={v}" for k, v in sorted(aliases.items()))
                events.publish("alias", model, detail=detail)
        for model in sorted(set(before.policies) | set(routes.policies)):
            policy = routes.policies.get(model)
            if policy != before.policies.get(model):
                events.publish("traffic", model, detail=_describe(policy) if policy else "cleared")

    def _load_missing(self) -> None:
        if not self._load_resident:
            return
        for model, version in sorted(self.pool.resident()):
            slot = self.pool.slot(model, version)
            if slot.state is VersionState.REGISTERED:
                _spawn(self._loads, self._load_quietly(slot))

    async def settle(self) -> None:
        """Wait for the loads a refresh started (at start-up, and in tests). A caller who stops
        waiting (an RPC's deadline) leaves them running: they still tell `on_change` (health)."""
        while self._loads:
            await asyncio.wait(list(self._loads))

    async def _poll(self) -> None:
        """Refresh when the listener hears a change, else every poll interval, whatever a refresh
        raises: the poller never stops by itself."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)
            self._wake.clear()
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except OrtserveError as exc:
                self._poll_failed(type(exc).__name__)
                log.warning("registry_poll_failed", error=str(exc))
            except Exception as exc:
                self._poll_failed(type(exc).__name__)
                log.error("registry_poll_failed", exc_info=exc)

    async def _load_quietly(self, slot: VersionSlot) -> None:
        with contextlib.suppress(FailedPrecondition):
            await self.pool.load(*slot.key)
        await self._changed()

    # --- registry writes, each followed by an immediate refresh here ----------------------

    async def register(self, manifest: Manifest, chunks: AsyncIterator[bytes], *, load: bool) -> VersionSlot:
        """Stream an upload into the store and registry; optionally load and warm it up here."""
        upload = await asyncio.to_thread(self.registry.begin_upload, manifest)
        try:
            async for chunk in chunks:
                await asyncio.to_thread(upload.write, chunk)
        except BaseException:
            upload.abort()
            raise
        record = await asyncio.to_thread(self.registry.finish_upload, upload, manifest)
        return await self._added(record, load=load)

    async def derive(
        self,
        model: str,
        version: int,
        recipe: Recipe,
        *,
        gate: Gate | None,
        calibration: Mapping[str, np.ndarray] | None,
        description: str,
        actor: str,
        load: bool,
    ) -> VersionSlot:
        """Build, compare and register a derived version (see `Registry.derive`); optionally load it."""
        record = await self._job(
            lambda: self.registry.derive(
                model,
                version,
                recipe,
                gate=gate,
                calibration=calibration,
                description=description,
                actor=actor,
            )
        )
        return await self._added(record, load=load)

    async def profile(self, model: str, version: int, batch_size: int, runs: int) -> Profile:
        return await self._job(
            lambda: self.registry.profile(model, version, batch_size=batch_size, runs=runs)
        )

    async def _job(self, work: Callable[[], T]) -> T:
        """Run `work` on a job thread; ResourceExhausted when `max_jobs` already run. The slot is
        held until the work ends, even when the caller stops waiting (its subprocess still runs).
        The thread is a daemon: a stopping server does not wait minutes for it, and the job's
        subprocess dies with the process (sandbox)."""
        if not self._job_slots.acquire(blocking=False):
            raise ResourceExhausted(
                f"{self._max_jobs} derivation or profile jobs are running on this server, its "
                "limit (max_toolkit_jobs); retry when one has finished"
            )
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[T] = loop.create_future()

        def run() -> None:
            settle: Callable[[], None]
            try:
                settle = functools.partial(outcome.set_result, work())
            except BaseException as exc:
                settle = functools.partial(outcome.set_exception, exc)
            finally:
                self._job_slots.release()  # before the caller hears, so its next job finds the slot
            _settle(loop, outcome, settle)

        try:
            threading.Thread(target=run, name="toolkit-job", daemon=True).start()
        except BaseException:
            self._job_slots.release()
            raise
        return await outcome

    async def _added(self, record: ModelVersionRecord, *, load: bool) -> VersionSlot:
        """A version just stored: into the pool here, loaded and warmed up when asked."""
        await self.refresh()
        slot = self.pool.slot(record.model, record.version)
        if load:
            with contextlib.suppress(FailedPrecondition):
                await self.pool.load(record.model, record.version)
            await self._changed()
        return slot

    async def set_alias(self, model: str, alias: str, version: int, actor: str) -> AliasRecord:
        action = "promote" if alias == PRODUCTION else "alias.set"
        record = await asyncio.to_thread(
            self.registry.set_alias, model, alias, version, actor=actor, action=action
        )
        await self._converged(model, record.version)
        return record

    async def rollback(self, model: str, alias: str, actor: str) -> AliasRecord:
        record = await asyncio.to_thread(self.registry.rollback, model, alias or PRODUCTION, actor=actor)
        await self._converged(model, record.version)
        return record

    async def delete_alias(self, model: str, alias: str, actor: str) -> None:
        await asyncio.to_thread(self.registry.delete_alias, model, alias, actor=actor)
        await self.refresh()

    async def set_traffic(
        self, model: str, entries: Sequence[TrafficEntry], sticky: bool, actor: str
    ) -> TrafficPolicy:
        policy = await asyncio.to_thread(
            self.registry.set_traffic, model, entries, sticky=sticky, actor=actor
        )
        await self.refresh()
        await self.settle()
        return policy

    async def set_shadow(self, model: str, target: str, share: float, actor: str) -> TrafficPolicy:
        policy = await asyncio.to_thread(self.registry.set_shadow, model, target, share, actor=actor)
        await self.refresh()
        await self.settle()
        return policy

    async def retire(self, model: str, version: int, actor: str) -> ModelVersionRecord:
        record = await asyncio.to_thread(self.registry.retire, model, version, actor=actor)
        await self.refresh()
        if self._drains:  # answer once it has drained; a caller who stops waiting leaves it running
            await asyncio.wait(list(self._drains))
        return record

    async def _converged(self, model: str, version: int) -> None:
        """After an alias change: refresh, and wait until its target is warm here (or failed)."""
        await self.refresh()
        await self.settle()
        slot = self.pool.slot(model, version)
        if slot.state is VersionState.FAILED:
            raise FailedPrecondition(
                f"model {model!r} version {version} failed to load here and takes no traffic: {slot.error}"
            )

    # --- loads and views ------------------------------------------------------------------

    async def load(self, model: str, version: int) -> VersionSlot:
        await self._ensure_known(model)
        if version == 0:
            version = self.pool.versions(model)[-1].record.version
        try:
            return await self.pool.load(model, version)
        finally:
            await self._changed()

    async def unload(self, model: str, version: int) -> None:
        await self._ensure_known(model)
        targets = [s.record.version for s in self.pool.versions(model)] if version == 0 else [version]
        for number in targets:
            await self.pool.unload(model, number)
        await self._changed()

    async def _ensure_known(self, model: str) -> None:
        """A model registered through another replica may not be in the pool yet."""
        try:
            self.pool.versions(model)
        except OrtserveError:
            await self.refresh()
            self.pool.versions(model)

    async def _changed(self) -> None:
        if self._listener is not None:
            await self._listener()

    def view(self, record: ModelVersionRecord) -> tuple[VersionState, str, tuple[str, ...]]:
        """State, error and active providers of a version on this server."""
        try:
            slot = self.pool.slot(record.model, record.version)
        except OrtserveError:
            return record.state, record.error, ()
        active = slot.session.providers if slot.session is not None else ()
        return slot.state, slot.error, active

    def fallback(self, record: ModelVersionRecord) -> tuple[str, ...]:
        """Preferred providers the version's session on this server could not use (none: not loaded)."""
        try:
            slot = self.pool.slot(record.model, record.version)
        except OrtserveError:
            return ()
        return slot.session.fallback if slot.session is not None else ()


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], set_it: Callable[[], None]) -> None:
    """Complete `future` on its loop from another thread, unless its caller went away."""

    def settle() -> None:
        if not future.done():
            set_it()

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
        loop.call_soon_threadsafe(settle)


def _spawn(tasks: set[asyncio.Task[None]], work: Coroutine[Any, Any, None]) -> None:
    """Run `work` in the background, tracked in `tasks` until it ends."""
    task = asyncio.create_task(work)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


def _describe(policy: TrafficPolicy) -> str:
    parts = [f"{e.target}={e.weight}" for e in policy.entries]
    if policy.sticky:
        parts.append("sticky")
    if policy.shadow_target:
        parts.append(f"shadow {policy.shadow_target}@{policy.shadow_share:g}")
    return " ".join(parts)
