"""A TCP proxy on 127.0.0.1 in front of one upstream, that the fleet test pauses to take the object
store away without losing its content (moto's server mode keeps its state in memory).

While paused, every open connection is closed and each new one is reset as soon as it is accepted,
so clients fail fast (connection reset), as they do when a store is down, rather than hang.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

BUFFER = 1 << 16
CONNECT_S = 5.0


class PausableProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._paused = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.refused = 0  # connections reset while paused
        self._thread = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pause(self) -> None:
        """Drop every connection; reset new ones until `resume`."""
        self._paused.set()
        with self._lock:
            dropped, self._open = self._open, set()
        for sock in dropped:
            _shut(sock)

    def resume(self) -> None:
        self._paused.clear()

    def close(self) -> None:
        self.pause()
        _shut(self._listener)
        self._thread.join(10)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # the listener was closed
                return
            if self._paused.is_set():
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self._upstream, timeout=CONNECT_S)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:  # a pause that began meanwhile drops this connection too
                if self._paused.is_set():
                    _shut(client)
                    _shut(upstream)
                    continue
                self._open.update((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(source, target), name="proxy-pump", daemon=True
                ).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        """Copy bytes one way until either side closes; then close both."""
        try:
            while data := source.recv(BUFFER):
                target.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.difference_update((source, target))
            _shut(source)
            _shut(target)


def _shut(sock: socket.socket) -> None:
    """Wake a thread blocked on the socket and close it (idempotent)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
