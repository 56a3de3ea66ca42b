"""A per-replica cache of ONNX Runtime-optimized models, so a restart does not redo graph optimization.

The first load of a model builds its session with `optimized_model_filepath` pointing at a temp
file in the cache directory; once the session exists the file is fsynced and renamed into place.
Later loads build the session from that file with graph optimizations off. A cached file that does
not load is deleted and the model loads from its original file (and is cached again): the cache
never fails a load. Files are evicted least recently used first (by mtime, refreshed on each hit)
above a size cap.

The key covers what shapes the optimized graph: the model's sha256, its session settings, ONNX
Runtime's version, the providers with their options, the custom operator libraries, and the CPU.
At level `all` ONNX Runtime writes NCHWc layouts for the CPU's instruction set (it warns that such a
file belongs to the machine that wrote it), hence the CPU's architecture and feature flags in the key:
a cache directory moved to another kind of CPU misses instead of loading a foreign layout.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from ortserve.records import ProviderSpec, SessionSettings
from ortserve.runtime.custom_ops import CustomOps

log = structlog.get_logger(__name__)
Result = Literal["hit", "miss", "error"]
RESULTS: tuple[Result, ...] = ("hit", "miss", "error")
# Providers whose optimized graphs ONNX Runtime can save; others (TensorRT, OpenVINO...) compile nodes.
CACHEABLE_PROVIDERS = frozenset({"CPUExecutionProvider", "CUDAExecutionProvider"})
_SUFFIX = ".onnx"
_TEMP_SUFFIX = ".tmp"
STALE_TEMP_S = 3600.0  # a temp file this old belongs to a load that crashed
# (model path, SessionOptions) -> InferenceSession
Build = Callable[[str, Any], Any]


@dataclass(frozen=True, slots=True)
class CacheKey:
    """The cached file's name, and the providers its graph is optimized for."""

    digest: str
    providers: tuple[str, ...]


class LoadCache:
    """Optimized models under `directory`, at most `max_bytes` of them (0: no limit). `on_result`
    receives one of hit, miss or error per load that the cache applies to."""

    def __init__(
        self, directory: Path, max_bytes: int = 0, on_result: Callable[[Result], None] | None = None
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._on_result = on_result or (lambda result: None)
        directory.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temps()

    def create(
        self,
        model_path: str,
        key: CacheKey | None,
        options: Any,
        build: Build,
    ) -> Any:
        """`build(path, options)`: an InferenceSession from the cached file of `key` when there is
        one, else from `model_path` while saving the optimized graph. `key` None: no caching."""
        if key is None:
            return build(model_path, options)
        cached = self.directory / (key.digest + _SUFFIX)
        result: Result = "miss"
        if cached.exists():
            session = self._from_cache(cached, options, build)
            if session is not None:
                self._on_result("hit")
                return session
            result = "error"
        session, saved = self._optimize(model_path, cached, key.providers, options, build)
        self._on_result(result if saved else "error")
        return session

    def _from_cache(self, cached: Path, options: Any, build: Build) -> Any:
        import onnxruntime as ort

        level = options.graph_optimization_level
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session = build(str(cached), options)
        except Exception as exc:  # a corrupt or foreign file: ORT raises several types
            log.warning("load_cache_unusable", file=str(cached), error=f"{type(exc).__name__}: {exc}")
            options.graph_optimization_level = level
            _unlink(cached)
            return None
        _touch(cached)
        log.debug("load_cache_hit", file=str(cached))
        return session

    def _optimize(
        self, model_path: str, cached: Path, requested: Sequence[str], options: Any, build: Build
    ) -> tuple[Any, bool]:
        temp = self.directory / f"{cached.stem}.{uuid.uuid4().hex}{_TEMP_SUFFIX}"
        options.optimized_model_filepath = str(temp)
        try:
            session = build(model_path, options)
        except Exception as exc:
            # Saving may be what failed (a model over protobuf's 2 GiB, a full disk): load without it;
            # a model that cannot load at all raises its own error here.
            _unlink(temp)
            options.optimized_model_filepath = ""
            session = build(model_path, options)
            log.warning("load_cache_write_failed", file=str(cached), error=f"{type(exc).__name__}: {exc}")
            return session, False
        lost = set(requested) - set(session.get_providers())
        if lost:  # the graph was optimized for the providers that started, not the ones in the key
            _unlink(temp)
            log.warning("load_cache_not_stored", file=str(cached), providers_not_started=sorted(lost))
            return session, False
        try:
            _commit(temp, cached)
        except OSError as exc:
            _unlink(temp)
            log.warning("load_cache_write_failed", file=str(cached), error=str(exc))
            return session, False
        log.debug("load_cache_stored", file=str(cached))
        self._evict(keep=cached)
        return session, True

    def _evict(self, keep: Path) -> None:
        """Delete least recently used files until the total is within `max_bytes`; `keep` (just
        written) goes last, only if it alone is over the cap."""
        if not self.max_bytes:
            return
        files = _cached_files(self.directory)
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files, key=lambda f: (f[2] == keep, f[0])):
            if total <= self.max_bytes:
                break
            _unlink(path)
            total -= size
            log.info("load_cache_evicted", file=str(path), bytes=size)

    def _remove_stale_temps(self) -> None:
        now = time.time()
        for path in self.directory.glob("*" + _TEMP_SUFFIX):
            try:
                if now - path.stat().st_mtime > STALE_TEMP_S:
                    _unlink(path)
            except FileNotFoundError:
                continue


def cache_key(
    model_sha256: str,
    settings: SessionSettings,
    providers: Sequence[ProviderSpec],
    custom_ops: CustomOps,
) -> CacheKey | None:
    """The cache key of a load, or None where caching does not apply: graph optimizations off
    (nothing to save) or a provider whose compiled nodes ONNX Runtime cannot save."""
    import onnxruntime as ort

    if settings.graph_optimization_level == "disable":
        return None
    if any(p.name not in CACHEABLE_PROVIDERS for p in providers):
        return None
    payload = {
        "model": model_sha256,
        "session": settings.to_json(),
        "onnxruntime": ort.__version__,
        "providers": [p.to_json() for p in providers],
        "custom_ops": custom_ops.to_json(),
        "cpu": cpu_fingerprint(),
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return CacheKey(digest, tuple(p.name for p in providers))


@functools.cache
def cpu_fingerprint() -> str:
    """The machine's architecture and CPU feature flags (the first processor's, from /proc/cpuinfo)."""
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith(("flags", "Features")):
                    flags = sorted(line.partition(":")[2].split())
                    break
    except OSError:
        flags = [platform.processor()]
    return " ".join([platform.machine(), *flags])


def _cached_files(directory: Path) -> list[tuple[float, int, Path]]:
    files = []
    for path in directory.glob("*" + _SUFFIX):
        try:
            stat = path.stat()
        except FileNotFoundError:  # another worker evicted it
            continue
        files.append((stat.st_mtime, stat.st_size, path))
    return files


def _commit(temp: Path, cached: Path) -> None:
    """fsync the file, rename it into place, fsync the directory: a crash leaves the whole file or none."""
    with open(temp, "rb") as file:
        os.fsync(file.fileno())
    temp.replace(cached)
    directory = os.open(cached.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):  # evicted meanwhile: the open session does not need the file
        os.utime(path)


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("load_cache_unlink_failed", file=str(path), error=str(exc))


__all__ = ["RESULTS", "CacheKey", "LoadCache", "Result", "cache_key", "cpu_fingerprint"]
