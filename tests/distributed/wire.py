"""Speak the coordination protocol by hand, as a worker would (or an attacker could)."""

from __future__ import annotations

import http.client
import itertools
import json

from devops.skypilot.node.coordination.protocol import Seal, hello_target


def send(
    port: int, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One HTTP request to the head on loopback: its status and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, target, body=body or None, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Wire:
    """Signed requests of node ``node``, numbered as the worker numbers them."""

    def __init__(self, port: int, token: bytes, node: int) -> None:
        self.port = port
        self.token = token
        self.node = node
        self.session = ""
        self._numbers = itertools.count(1)

    def join(self) -> str:
        status, body = self.send("GET", hello_target(self.node), session="")
        assert status == 200, body
        self.session = json.loads(body)["session"]
        return self.session

    def seal(self, method: str, target: str, body: bytes = b"", session: str | None = None) -> Seal:
        nonce = f"{self.node}.{next(self._numbers)}"
        chosen = self.session if session is None else session
        return Seal.of(self.token, chosen, nonce, method, target, body)

    def send(
        self, method: str, target: str, body: bytes = b"", session: str | None = None
    ) -> tuple[int, bytes]:
        return send(
            self.port, method, target, body, self.seal(method, target, body, session).headers()
        )
