"""A TCP forwarder on loopback that keeps what each client sent: a recorder on the wire."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator


class RecordingProxy:
    """Listens on a loopback port, forwards each connection to ``upstream``, records its bytes."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        #: What each finished connection's client sent, in the order they finished.
        self.sent: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def recorded(self, prefix: bytes, timeout: float = 30.0) -> bytes:
        """The first finished exchange whose request starts with ``prefix``."""
        deadline = time.monotonic() + timeout  # a guard against hanging
        while time.monotonic() < deadline:
            with self._lock:
                for data in self.sent:
                    if data.startswith(prefix):
                        return data
            time.sleep(0.02)
        raise AssertionError(f"no {prefix!r} request went through the proxy")

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            thread = threading.Thread(target=self._pump, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pump(self, client: socket.socket) -> None:
        sent = bytearray()
        with contextlib.ExitStack() as stack:
            stack.enter_context(client)
            try:
                server = stack.enter_context(
                    socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
                )
            except OSError:
                return
            for chunk, source in _relay(client, server, self._stop):
                if source is client:
                    sent += chunk
        with self._lock:
            self.sent.append(bytes(sent))


def _relay(
    client: socket.socket, server: socket.socket, stop: threading.Event
) -> Iterator[tuple[bytes, socket.socket]]:
    """Copy both ways until the server closes (it answers once, then closes)."""
    peers = {client: server, server: client}
    while not stop.is_set():
        readable, _, _ = select.select(list(peers), [], [], 0.1)
        for source in readable:
            try:
                chunk = source.recv(65536)
            except OSError:
                return
            if not chunk:
                if source is server:
                    return
                with contextlib.suppress(OSError):
                    server.shutdown(socket.SHUT_WR)
                del peers[client]
                continue
            yield chunk, source
            with contextlib.suppress(OSError):
                peers[source].sendall(chunk)
