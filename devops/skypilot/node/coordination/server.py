"""The head's HTTP endpoint: one thread runs one event loop that serves every connection.

Every worker of the job holds a long poll open, so a thread per connection
would mean a thousand threads on a 1,024-node job; and a sender that trickles
its request a byte at a time would keep its thread as long as it likes. Here a
connection costs a socket, a small buffer and a timer until its request is
complete, whoever sent it:

- the whole request (line, headers, body) must arrive within
  ``request_deadline`` of the connection, or the connection is dropped;
- at most ``max_pending`` connections may be without a complete request: a
  new one drops the oldest, so a crowd of slow senders cannot crowd out a
  worker, whose request arrives in one piece;
- only a complete request reaches the application (which authenticates it),
  as one task; a long poll whose client goes away is cancelled.

The answer is HTTP/1.0 and the connection closes after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

logger = logging.getLogger(__name__)

#: Longest request line plus headers; ours are a few hundred bytes.
MAX_HEAD_BYTES = 8192
#: Seconds the loop waits for answers in flight when it stops, then drops them.
_STOP_GRACE = 0.5


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    #: Header names in lower case.
    headers: Mapping[str, str]
    body: bytes
    client: str


@dataclass(frozen=True)
class Answer:
    status: int
    #: JSON, exactly the bytes sent (an answer's signature covers them).
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def error(cls, status: int, why: str) -> Answer:
        return cls(status, json.dumps({"error": why}).encode())


@dataclass(frozen=True)
class Limits:
    request_deadline: float
    max_body: int
    max_pending: int


App = Callable[[Request], Awaitable[Answer]]
#: (client address, HTTP status, why): a request refused before the application saw it.
OnReject = Callable[[str, int, str], None]


class _Refused(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def encode(answer: Answer) -> bytes:
    phrase = HTTPStatus(answer.status).phrase
    lines = [
        f"HTTP/1.0 {answer.status} {phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(answer.body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in answer.headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + answer.body


def parse_head(raw: bytes) -> tuple[str, str, dict[str, str]]:
    """Request line and headers (without the blank line) -> method, target, headers."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise _Refused(400, "not an HTTP/1.x request")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _Refused(400, "malformed header line")
        key = name.lower()
        if key in headers:
            raise _Refused(400, f"repeated header {name}")
        headers[key] = value.strip()
    return parts[0], parts[1], headers


def body_length(method: str, headers: Mapping[str, str], limit: int) -> int:
    if "transfer-encoding" in headers:
        raise _Refused(411, "Content-Length required (no transfer encodings)")
    declared = headers.get("content-length")
    if declared is None:
        if method == "POST":
            raise _Refused(411, "missing Content-Length")
        return 0
    if not (declared.isascii() and declared.isdigit()):
        raise _Refused(411, "bad Content-Length")
    size = int(declared)
    if size > limit:
        # Refused on the declared length, before a byte of the body is read.
        raise _Refused(413, f"{size} bytes > {limit}")
    return size


class _Connection(asyncio.Protocol):
    """One connection: gather one request under the deadline, then answer it once."""

    def __init__(self, server: EventLoopServer) -> None:
        self._server = server
        self._buffer = bytearray()
        self._head: tuple[str, str, dict[str, str]] | None = None
        self._body_at = 0
        self._length = 0
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.client = "?"
        # Known from the accept on, before its transport: a connection accepted just
        # before the server stops must be closed too, not left open and unread.
        server.enter(self)

    # ----------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self._server.stopping:
            transport.abort()  # accepted as the server stopped: a reset, not silence
            return
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._server.limits.request_deadline, self._expire)
        self._server.admit(self)

    def data_received(self, data: bytes) -> None:
        if self._task is not None or self._transport is None or self._transport.is_closing():
            return  # one request per connection: anything after it is ignored
        self._buffer += data
        try:
            request = self._complete_request()
        except _Refused as refused:
            self._refuse(refused.status, str(refused))
            return
        if request is None:
            return
        self._settled()
        self._buffer = bytearray()
        self._task = asyncio.get_running_loop().create_task(self._respond(request))
        self._server.track(self._task)

    def eof_received(self) -> bool:
        # A sender that half-closes after a complete request still gets its answer.
        return self._task is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self._settled()
        self._transport = None
        if self._task is not None and not self._task.done():
            self._task.cancel()  # a long poll nobody waits for any more
        self._server.forget(self)

    # ----------------------------------------------------------------- the request

    def _complete_request(self) -> Request | None:
        limits = self._server.limits
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES + 4)
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise _Refused(431, f"request head over {MAX_HEAD_BYTES} bytes")
                return None
            method, target, headers = parse_head(bytes(self._buffer[:end]))
            self._length = body_length(method, headers, limits.max_body)
            self._head = (method, target, headers)
            self._body_at = end + 4
        if len(self._buffer) - self._body_at < self._length:
            return None
        method, target, headers = self._head
        body = bytes(self._buffer[self._body_at : self._body_at + self._length])
        return Request(method, target, headers, body, self.client)

    async def _respond(self, request: Request) -> None:
        try:
            answer = await self._server.app(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("coordination: answering %s failed", request.target, exc_info=True)
            answer = Answer.error(500, "internal error")
        self._send(answer)

    # ----------------------------------------------------------------- endings

    def _settled(self) -> None:
        """No longer waiting for a request: off the pending list, deadline off."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._server.settle(self)

    def _expire(self) -> None:
        deadline = self._server.limits.request_deadline
        self._drop(408, f"no complete request within {deadline:g}s")

    def evict(self) -> None:
        self._drop(503, "dropped: too many connections without a complete request")

    def _drop(self, status: int, why: str) -> None:
        """A sender that does not deserve an answer: log it and free the socket now."""
        self._server.on_reject(self.client, status, why)
        self.close_now()

    def close_now(self) -> None:
        self._settled()
        if self._transport is not None:
            self._transport.abort()

    def _refuse(self, status: int, why: str) -> None:
        self._server.on_reject(self.client, status, why)
        self._settled()
        self._send(Answer.error(status, why))

    def _send(self, answer: Answer) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(encode(answer))
        transport.close()
        # A peer that never reads cannot keep the socket: the answer is small.
        loop = asyncio.get_running_loop()
        loop.call_later(self._server.limits.request_deadline, transport.abort)


class EventLoopServer:
    """Serves ``app`` on a bound socket from one thread; :meth:`stop` ends it."""

    def __init__(self, sock: socket.socket, app: App, limits: Limits, on_reject: OnReject) -> None:
        self.app = app
        self.limits = limits
        self.on_reject = on_reject
        self._sock = sock
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_error)
        self._ready = threading.Event()
        self._stopping: asyncio.Future[None] | None = None
        self.stopping = False
        #: Set on the loop's thread once stopping and every connection is gone.
        self._all_gone: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        #: Connections without a complete request yet, oldest first (a dict keeps the order).
        self._pending: dict[_Connection, None] = {}
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        return len(self._connections)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="skyguard-coordination", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10.0)

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop's thread, from any thread; nothing once it stopped."""
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._loop.call_soon_threadsafe(callback)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting, let answers in flight go out briefly, drop the rest."""
        if self._thread is None:
            self._sock.close()
            self._loop.close()
            return
        if self._ready.is_set():
            self.call_soon(self._request_stop)
        self._thread.join(timeout=timeout)

    # ----------------------------------------------------------------- bookkeeping

    def enter(self, connection: _Connection) -> None:
        self._connections.add(connection)

    def admit(self, connection: _Connection) -> None:
        while len(self._pending) >= self.limits.max_pending:
            next(iter(self._pending)).evict()
        self._pending[connection] = None

    def settle(self, connection: _Connection) -> None:
        self._pending.pop(connection, None)

    def forget(self, connection: _Connection) -> None:
        self._pending.pop(connection, None)
        self._connections.discard(connection)
        if self.stopping and not self._connections and self._all_gone is not None:
            self._all_gone.set()

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----------------------------------------------------------------- the loop's thread

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._ready.set()
            self._loop.close()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Connection(self), sock=self._sock, backlog=socket.SOMAXCONN
        )
        self._stopping = loop.create_future()
        self._all_gone = asyncio.Event()
        self._ready.set()
        await self._stopping
        # Stop accepting before closing the server: a connection accepted in the turn
        # before would otherwise meet a closed server when its transport is made
        # (asyncio's Server._attach asserts, the error is swallowed) and its socket stay
        # open and unread, its client waiting out its timeout. One turn lets every such
        # connection get its transport while the server is still open.
        loop.remove_reader(self._sock.fileno())
        await asyncio.sleep(0)
        server.close()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=_STOP_GRACE)
        # From here a connection is reset, whether it has its transport yet or not: one
        # left open would hold its client's request unanswered until the client's timeout.
        self.stopping = True
        for connection in list(self._connections):
            connection.close_now()
        for task in list(self._tasks):
            task.cancel()
        if self._connections:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), _STOP_GRACE)
        await asyncio.sleep(0)  # let the cancelled tasks finish

    def _request_stop(self) -> None:
        if self._stopping is not None and not self._stopping.done():
            self._stopping.set_result(None)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # E.g. accept() out of file descriptors: one line, not a traceback in the job's log.
        error = context.get("exception")
        logger.warning("coordination: %s%s", context.get("message"), f": {error}" if error else "")
