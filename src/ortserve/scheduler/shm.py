"""System shared memory regions (Triton's extension), registered per caller.

A caller registers a POSIX shared memory object ("/name", created by the client, e.g. with
`tritonclient.utils.shared_memory`) under a region name; requests then name the region, an offset
and a byte size instead of carrying tensor bytes. Choices:

- Owner: the bearer token's name (`ortserve.server.auth.CALLER`); without tokens every caller is the
  one owner "" (as in Triton, where all clients share one table). Keying by the peer's address would
  lose the regions on every reconnect.
- Only POSIX shared memory: the key is "/name" with no other slash, opened as /dev/shm/<name> with
  O_NOFOLLOW (no symlinks) and only when it is a regular file; anything else is INVALID_ARGUMENT.
- Mapped once at register; the registered offset/size must lie within the object's size then, and
  every use is bounds-checked against the registered size and (one fstat) against the object's
  size now, so an object truncated below the region is INVALID_ARGUMENT naming the region. An
  object unlinked after registering stays mapped and usable (POSIX keeps it until the last mapping
  goes). Trust: a client that truncates its object *while* a request reads it makes the server
  fault (SIGBUS), as with Triton; shared memory is for co-located clients the operator trusts with
  the infer scope.
- Unregister takes effect at once for new requests. Inputs are numpy arrays over the mapping, and
  the mapping is an mmap object those arrays keep alive through the buffer protocol: a request in
  flight keeps reading valid memory, and the mapping is unmapped when the last such array goes
  (at once when none is left). No copy and no refusal are needed; no array ever outlives its mapping.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ortserve.errors import AlreadyExists, InvalidInput, NotFound, PermissionDenied, ResourceExhausted, logged

SHM_DIR = "/dev/shm"
MAX_REGIONS_PER_CALLER = 256
MAX_NAME_LENGTH = 256
_KEY = re.compile(r"^/[^/\x00]{1,255}$")
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_ERRORS = {
    errno.ENOENT: "does not exist",
    errno.ELOOP: "is a symbolic link",
    errno.EACCES: "may not be opened for reading and writing by the server",
    errno.EPERM: "may not be opened for reading and writing by the server",
    errno.EISDIR: "is not a shared memory object",
}


@dataclass(eq=False)
class Region:
    """One registered region: `byte_size` bytes at `offset` of the object `key`."""

    name: str
    key: str
    offset: int
    byte_size: int
    _map: mmap.mmap = field(repr=False)
    _fd: int = field(repr=False)

    def read(self, offset: int, byte_size: int, what: str) -> memoryview:
        """A read-only view of the bytes a request names (no copy)."""
        start = self._bounds(offset, byte_size, what)
        return memoryview(self._map)[start : start + byte_size].toreadonly()

    def decode(
        self, decoder: Callable[[memoryview], np.ndarray], offset: int, byte_size: int, what: str
    ) -> np.ndarray:
        """`decoder` applied to the bytes a request names; its InvalidInput also names this region."""
        data = self.read(offset, byte_size, what)
        try:
            return decoder(data)
        except InvalidInput as exc:
            raise InvalidInput(f"{exc} (in shared memory region {self.name!r})") from None

    def write(self, offset: int, byte_size: int, data: bytes, what: str) -> None:
        """Copy `data` to the place a request named, which must hold it."""
        start = self._bounds(offset, byte_size, what)
        if len(data) > byte_size:
            raise InvalidInput(
                f"{what} is {len(data)} bytes but its shared memory region {self.name!r} "
                f"gives it {byte_size} bytes (shared_memory_byte_size)"
            )
        self._map[start : start + len(data)] = data

    def _bounds(self, offset: int, byte_size: int, what: str) -> int:
        if offset < 0 or byte_size < 0 or offset + byte_size > self.byte_size:
            raise InvalidInput(
                f"{what}: offset {offset} + byte size {byte_size} is outside shared memory region "
                f"{self.name!r} of {self.byte_size} bytes"
            )
        start = self.offset + offset
        if self._fd < 0 or os.fstat(self._fd).st_size < start + byte_size:
            raise InvalidInput(
                f"{what}: shared memory region {self.name!r} is gone or its object {self.key!r} "
                "shrank below the registered size"
            )
        return start

    def close(self) -> None:
        """Unmap now, or when the last array over the mapping goes (it keeps the mmap alive)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(BufferError):
            self._map.close()


# The calling owner's region of a name: what the request converters are given.
RegionLookup = Callable[[str], Region]


class SharedMemoryRegistry:
    """Regions by owner and name; used from the event loop only, so it needs no lock."""

    def __init__(self, shm_dir: str = SHM_DIR, key_prefix: str = "") -> None:
        self._dir = shm_dir
        # Only objects whose key starts with this may be mapped: without it, any caller with the
        # infer scope could map any object in /dev/shm that the server's user can open.
        self._key_prefix = key_prefix
        self._regions: dict[str, dict[str, Region]] = {}

    def register(self, owner: str, name: str, key: str, offset: int, byte_size: int) -> Region:
        regions = self._regions.setdefault(owner, {})
        _check_name(name)
        if name in regions:
            raise AlreadyExists(f"shared memory region {name!r} is registered already; unregister it first")
        if len(regions) >= MAX_REGIONS_PER_CALLER:
            raise ResourceExhausted(
                f"shared memory region {name!r}: a caller may register at most {MAX_REGIONS_PER_CALLER}"
            )
        if byte_size <= 0:
            raise InvalidInput(f"shared memory region {name!r}: byte_size must be positive, got {byte_size}")
        region = Region(name, key, offset, byte_size, *self._map(name, key, offset + byte_size))
        regions[name] = region
        return region

    def region(self, owner: str, name: str) -> Region:
        """The caller's region `name`; INVALID_ARGUMENT naming it when there is none."""
        region = self._regions.get(owner, {}).get(name)
        if region is None:
            raise InvalidInput(f"shared memory region {name!r} is not registered")
        return region

    def status(self, owner: str, name: str = "") -> list[Region]:
        regions = self._regions.get(owner, {})
        if not name:
            return list(regions.values())
        if name not in regions:
            raise NotFound(f"shared memory region {name!r} is not registered")
        return [regions[name]]

    def unregister(self, owner: str, name: str = "") -> None:
        """Unregister one region, or all of the caller's with an empty name; unknown names are a no-op."""
        regions = self._regions.get(owner, {})
        doomed = list(self._drain(regions)) if not name else [r for r in [regions.pop(name, None)] if r]
        for region in doomed:
            region.close()

    def close(self) -> None:
        """Unregister every region of every caller (shutdown)."""
        for regions in self._regions.values():
            for region in self._drain(regions):
                region.close()
        self._regions.clear()

    @staticmethod
    def _drain(regions: dict[str, Region]) -> Iterator[Region]:
        while regions:
            yield regions.popitem()[1]

    def _map(self, name: str, key: str, needed: int) -> tuple[mmap.mmap, int]:
        """The mapping of the object's first `needed` bytes and its open descriptor."""
        what = f"shared memory region {name!r} key {key!r}"
        if not _KEY.match(key) or key in ("/.", "/.."):
            raise InvalidInput(
                f"{what}: a key must be a POSIX shared memory name, '/' and 1-255 characters without '/'"
            )
        if not key.startswith(self._key_prefix):
            raise PermissionDenied(
                f"{what}: this server maps only keys starting with {self._key_prefix!r} "
                "(its shared_memory_key_prefix setting)"
            )
        try:
            fd = os.open(os.path.join(self._dir, key[1:]), _OPEN_FLAGS)
        except OSError as exc:
            reason = _OPEN_ERRORS.get(exc.errno or 0)
            if reason is None:
                raise InvalidInput(logged(f"{what} cannot be opened", exc)) from None
            raise InvalidInput(f"{what} {reason}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidInput(f"{what} is not a shared memory object")
            if needed > info.st_size:
                raise InvalidInput(
                    f"{what}: offset + byte_size = {needed} is past the end of the object "
                    f"({info.st_size} bytes)"
                )
            return mmap.mmap(fd, needed, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE), fd
        except BaseException:
            os.close(fd)
            raise


def detached(array: np.ndarray) -> np.ndarray:
    """`array`, copied when it is a view of a shared memory mapping: whatever reads it after the
    request was answered (a shadow copy) must not see the caller's next input there."""
    base: object = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap):
        return array.copy()
    return array


def _check_name(name: str) -> None:
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"a shared memory region needs a name of 1-{MAX_NAME_LENGTH} characters, got {name!r}"
        )


__all__ = ["Region", "RegionLookup", "SharedMemoryRegistry", "detached"]
