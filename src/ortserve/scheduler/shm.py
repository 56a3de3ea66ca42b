"""System shared memory regions (Triton's extension), registered per caller.

A caller registers a POSIX shared memory object ("/name", created by the client, e.g. with
`tritonclient.utils.shared_memory`) under a region name; requests then name the region, an offset
and a byte size instead of carrying tensor bytes. Choices:

- Owner: the bearer token's name (`ortserve.server.auth.CALLER`); without tokens every caller is the
  one owner "" (as in Triton, where all clients share one table). Keying by the peer's address would
  lose the regions on every reconnect.
- Only POSIX shared memory: the key is "/name" with no other slash, opened as /dev/shm/<name> with
  O_NOFOLLOW (no symlinks) and only when it is a regular file; anything else is INVALID_ARGUMENT.
- Opened once at register, never mapped: the registered offset/size must lie within the object's
  size then. Inputs are read with `preadv` into the array the request uses (one copy) and outputs
  written with `pwrite`, so a client that truncates its object, even while a request reads or
  writes it, gets INVALID_ARGUMENT naming the region (a short read, or `fstat` before a write)
  instead of making the server fault (SIGBUS on a mapping past the end of its object). A `pwrite`
  that races a truncation extends the object again (tmpfs); that is the client's own data. An
  object unlinked after registering stays usable (the open descriptor keeps it).
- Unregister closes the descriptor at once; requests use it only on the event loop, as the
  registry does, so no read or write sees a closed or reused descriptor. Inputs are the server's
  own copy, so whatever reads them after the answer (a shadow copy) never sees the caller's next
  input.
"""

from __future__ import annotations

import errno
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
    """One registered region: `byte_size` bytes at `offset` of the object `key`, open as `_fd`."""

    name: str
    key: str
    offset: int
    byte_size: int
    _fd: int = field(repr=False)
    max_read_bytes: int = 0  # what one read may copy (the server's max_request_bytes; 0: no limit)

    def read(self, offset: int, byte_size: int, what: str) -> memoryview:
        """A copy of the bytes a request names, read from the object now."""
        start = self._start(offset, byte_size, what)
        if self.max_read_bytes and byte_size > self.max_read_bytes:
            raise ResourceExhausted(
                f"{what}: {byte_size} bytes from shared memory region {self.name!r} are more than "
                f"one request may send ({self.max_read_bytes} bytes, max_request_bytes)"
            )
        view = np.empty(byte_size, np.uint8).data  # not zeroed: every byte is read into or refused
        done = 0
        while done < byte_size:
            count = os.preadv(self._fd, [view[done:]], start + done)
            if count == 0:
                raise self._shrunk(what, start + byte_size)
            done += count
        return view.toreadonly()

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
        """Copy `data` to the place a request named, which must hold it, if the object still does."""
        start = self.check(offset, byte_size, what)
        if len(data) > byte_size:
            raise InvalidInput(
                f"{what} is {len(data)} bytes but its shared memory region {self.name!r} "
                f"gives it {byte_size} bytes (shared_memory_byte_size)"
            )
        view = memoryview(data)
        done = 0
        while done < len(data):
            done += os.pwrite(self._fd, view[done:], start + done)

    def check(self, offset: int, byte_size: int, what: str) -> int:
        """Where the place a request names starts in the object, which must hold it now (one fstat)."""
        start = self._start(offset, byte_size, what)
        if os.fstat(self._fd).st_size < start + byte_size:
            raise self._shrunk(what, start + byte_size)
        return start

    def _start(self, offset: int, byte_size: int, what: str) -> int:
        """Where the place starts; INVALID_ARGUMENT when it is outside the registered region or the
        region was unregistered."""
        if offset < 0 or byte_size < 0 or offset + byte_size > self.byte_size:
            raise InvalidInput(
                f"{what}: offset {offset} + byte size {byte_size} is outside shared memory region "
                f"{self.name!r} of {self.byte_size} bytes"
            )
        if self._fd < 0:
            raise InvalidInput(f"{what}: shared memory region {self.name!r} was unregistered")
        return self.offset + offset

    def _shrunk(self, what: str, needed: int) -> InvalidInput:
        size = os.fstat(self._fd).st_size
        return InvalidInput(
            f"{what}: the object {self.key!r} of shared memory region {self.name!r} has {size} bytes "
            f"but {needed} are needed (it shrank below the registered size)"
        )

    def close(self) -> None:
        """Close the descriptor (unregister, shutdown)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# The calling owner's region of a name: what the request converters are given.
RegionLookup = Callable[[str], Region]


class SharedMemoryRegistry:
    """Regions by owner and name; used from the event loop only, so it needs no lock."""

    def __init__(self, shm_dir: str = SHM_DIR, key_prefix: str = "", max_read_bytes: int = 0) -> None:
        self._dir = shm_dir
        self._max_read_bytes = max_read_bytes
        # Only objects whose key starts with this may be opened: without it, any caller with the
        # infer scope could read and write any object in /dev/shm that the server's user can open.
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
        fd = self._open(name, key, offset + byte_size)
        region = Region(name, key, offset, byte_size, fd, self._max_read_bytes)
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

    def _open(self, name: str, key: str, needed: int) -> int:
        """An open descriptor of the object, which holds at least `needed` bytes now."""
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
            return fd
        except BaseException:
            os.close(fd)
            raise


def _check_name(name: str) -> None:
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"a shared memory region needs a name of 1-{MAX_NAME_LENGTH} characters, got {name!r}"
        )


__all__ = ["Region", "RegionLookup", "SharedMemoryRegistry"]
