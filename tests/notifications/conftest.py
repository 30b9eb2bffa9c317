"""Fixtures for the notification tests; the fake servers live in notify_fakes.py."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest

from tests.notifications.notify_fakes import LoopbackServer, Reply, Script, Validator


@pytest.fixture
def serve() -> Iterator[Callable[..., LoopbackServer]]:
    """Start loopback servers; every one is stopped when the test ends."""
    started: list[LoopbackServer] = []

    def start(
        replies: list[Script] | None = None, validate: Validator | None = None
    ) -> LoopbackServer:
        server = LoopbackServer(replies or [Reply()], validate)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def webhook_token() -> str:
    """A Discord-like webhook token, unique per test so a leak is unmistakable."""
    return "whtok" + secrets.token_hex(24)


@pytest.fixture
def github_token() -> str:
    return "ghp_" + secrets.token_hex(18)


@pytest.fixture
def slack_token() -> str:
    """The secret last part of a Slack webhook URL."""
    return secrets.token_hex(12)
