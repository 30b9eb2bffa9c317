"""Ports for a listener-to-be: free now, and never from the ephemeral range."""

from __future__ import annotations

import socket
from pathlib import Path

from devops.skypilot.node.ports import (
    DEFAULT_EPHEMERAL_LOW,
    LOWEST,
    ephemeral_low,
    free_listen_port,
)


def test_a_port_is_below_the_ephemeral_range_and_bindable() -> None:
    low = ephemeral_low()
    for _ in range(20):
        port = free_listen_port()
        assert LOWEST <= port < max(low, LOWEST + 1000)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_someone_is_bound_to_is_never_returned() -> None:
    held = socket.socket()
    try:
        port = free_listen_port()
        held.bind(("127.0.0.1", port))
        # [port, port + 2) holds one taken port and one that may be free: when it is,
        # it is the only answer; when someone else holds it too, there is none.
        answers: set[int | None] = set()
        for _ in range(20):
            try:
                answers.add(free_listen_port(low=port, high=port + 2))
            except OSError:
                answers.add(None)
        assert port not in answers
    finally:
        held.close()


def test_the_range_falls_back_when_proc_is_unreadable(tmp_path: Path) -> None:
    assert ephemeral_low(tmp_path / "missing") == DEFAULT_EPHEMERAL_LOW
    (tmp_path / "garbage").write_text("not numbers\n")
    assert ephemeral_low(tmp_path / "garbage") == DEFAULT_EPHEMERAL_LOW
