"""The control plane: registry writes, loads and unloads, and convergence with the registry.

Runs beside the hot path. Each server polls the registry revision (one row) and picks up
versions registered through any replica; the in-memory pool is what Predict reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

from ortserve.errors import FailedPrecondition, OrtserveError
from ortserve.registry.records import Manifest, ModelVersionRecord, VersionState
from ortserve.registry.service import Registry
from ortserve.scheduler.pool import ModelPool, VersionSlot

log = structlog.get_logger(__name__)


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
    ) -> None:
        self.registry = registry
        self.pool = pool
        self._load_new = load_on_start
        self._poll_interval_s = poll_interval_s
        self._listener = on_change
        self._revision = -1
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh()
        self._poller = asyncio.create_task(self._poll(), name="registry-poll")

    async def aclose(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.pool.aclose()

    async def refresh(self) -> None:
        """Pick up versions registered since the last look (through this server or another)."""
        revision = await asyncio.to_thread(self.registry.revision)
        if revision == self._revision:
            return
        records = await asyncio.to_thread(self.registry.all_versions)
        added = self.pool.sync(records)
        self._revision = revision
        if self._load_new:
            await asyncio.gather(*(self._load_quietly(slot) for slot in added))
        await self._changed()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                await self.refresh()
            except OrtserveError as exc:
                log.warning("registry_poll_failed", error=str(exc))

    async def _load_quietly(self, slot: VersionSlot) -> None:
        with contextlib.suppress(FailedPrecondition):
            await self.pool.load(*slot.key)

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
        return await self._adopt(record, load=load)

    async def _adopt(self, record: ModelVersionRecord, *, load: bool) -> VersionSlot:
        self.pool.sync([record])
        slot = self.pool.slot(record.model, record.version)
        if load or self._load_new:
            with contextlib.suppress(FailedPrecondition):
                await self.pool.load(record.model, record.version)
        await self._changed()
        return slot

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


__all__ = ["ControlPlane"]
