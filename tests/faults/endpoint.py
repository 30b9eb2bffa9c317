"""A notification endpoint on loopback that misbehaves on purpose: down, rate-limited, slow."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: Part of the webhook URL's path that must never show up in any output.
TOKEN = "faultmatrix-secret-token"


@dataclass
class Endpoint:
    """What the runner should post to, and what it posted."""

    url: str
    mode: str
    #: (monotonic time, request body) of every POST that arrived.
    posts: list[tuple[float, dict[str, object]]] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


def _handler(endpoint: Endpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            endpoint.posts.append((time.monotonic(), json.loads(body or b"{}")))
            if endpoint.mode == "slow":
                # Longer than any read timeout the runner allows; cut short at teardown.
                endpoint.stop.wait(30)
            if endpoint.mode == "429" and len(endpoint.posts) <= 2:
                self._answer(429, {"message": "You are being rate limited.", "retry_after": 0.2})
            elif "wait=true" in self.path:
                # Discord's answer with ?wait=true: the stored message.
                self._answer(200, {"id": str(len(endpoint.posts)), "type": 0})
            else:
                self._answer(204, None)

        def _answer(self, code: int, payload: dict[str, object] | None) -> None:
            endpoint.answered.append(code)
            data = json.dumps(payload).encode() if payload is not None else b""
            with contextlib.suppress(OSError):  # the client may have given up already
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


def free_port() -> int:
    """A loopback port nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.contextmanager
def serve(mode: str) -> Iterator[Endpoint]:
    """``down``: nothing listens; ``429``: rate-limits the first two posts; ``slow``: stalls;
    anything else (``ok``): answers 204."""
    path = f"/api/webhooks/1/{TOKEN}"
    if mode == "down":
        yield Endpoint(f"http://127.0.0.1:{free_port()}{path}", mode)
        return
    endpoint = Endpoint("", mode)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(endpoint))
    server.daemon_threads = True
    endpoint.url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        endpoint.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
