"""The head's side of coordination: rank 0 keeps the board of node ends and serves it."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import resource
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from devops.skypilot.common.termination import Verdict
from devops.skypilot.node.coordination.protocol import (
    HEAD_RANK,
    HELLO_PATH,
    NONCE_HEADER,
    SESSION_HEADER,
    SIGNATURE_HEADER,
    CoordinationConfig,
    CoordinationError,
    Coordinator,
    NodeEnd,
    Seal,
    new_session,
    node_field,
    parse_nonce,
)
from devops.skypilot.node.coordination.server import Answer, EventLoopServer, Limits, Request
from devops.skypilot.node.environment import SkyPilotEnv

logger = logging.getLogger(__name__)

#: Request numbers a sender may have in flight out of order; older ones are refused.
REPLAY_WINDOW = 64
#: Connections without a complete request the head keeps, at least (see server.py).
MIN_PENDING = 256
#: File descriptors the head wants beyond its connections (the runner, logs, the command).
_SPARE_FDS = 256


class _Rejected(Exception):
    """A message the head will not act on; ``status`` is the HTTP answer."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class _Board:
    """What the head knows of the attempt; shared by the server's thread and the runner's."""

    def __init__(self, num_nodes: int) -> None:
        self.num_nodes = num_nodes
        self._changed = threading.Condition()
        self.started: set[int] = set()
        self.ends: dict[int, NodeEnd] = {}
        self.decision: NodeEnd | None = None
        self.closing = False
        #: Called (under no lock) after every change; the server wakes its long polls.
        self.on_change: Callable[[], None] = lambda: None

    def start(self, node: int) -> None:
        with self._changed:
            self.started.add(node)
            self._changed.notify_all()

    def end(self, end: NodeEnd) -> NodeEnd | None:
        """Record an end; the first that is a decision wins. Returns the decision."""
        with self._changed:
            # A node that ended had started, even if its start report lost the race.
            self.started.add(end.node)
            self.ends.setdefault(end.node, end)
            if end.is_decision and self.decision is None:
                self.decision = end
                logger.warning("coordination: decision for every node: %s", end.describe())
            self._changed.notify_all()
            decision = self.decision
        self.on_change()
        return decision

    def has_news(self) -> bool:
        """What a long poll waits for; once true it stays true."""
        with self._changed:
            return self.decision is not None or HEAD_RANK in self.ends or self.closing

    def settled(self) -> bool:
        """The exit barrier is open: the head is done (every node ended, or its wait for
        them ran out, and it has notified); once true it stays."""
        with self._changed:
            return self.closing

    def state(self) -> dict[str, Any]:
        """The decision, the head's end and the barrier, as a long poll answers them."""
        with self._changed:
            head_end = self.ends.get(HEAD_RANK)
            return {
                "decision": None if self.decision is None else self.decision.to_json(),
                "head_end": None if head_end is None else head_end.to_json(),
                "settled": self.closing,
            }

    def wait_all_ended(self, timeout: float) -> bool:
        """Until every node has reported its end; False on timeout.

        Every worker of the job, not only those that announced themselves: one
        that starts late must still find the head serving. Learning the outcome
        is not enough: a worker that learned it is still stopping its command, and
        the head must not exit before (on Slurm its non-zero exit has the others
        SIGTERMed); the head's record should hold every node's end, too.
        """
        with self._changed:
            return self._changed.wait_for(lambda: len(self.ends) == self.num_nodes, timeout)

    def close(self) -> None:
        with self._changed:
            self.closing = True
            self._changed.notify_all()
        self.on_change()

    def to_json(self) -> dict[str, Any]:
        with self._changed:
            return {
                "decision": None if self.decision is None else self.decision.to_json(),
                "started": sorted(self.started),
                "ends": {str(node): end.to_json() for node, end in sorted(self.ends.items())},
            }


class _Freshness:
    """Each request number of each node is accepted once per session (a sliding window).

    Only the server's thread uses it. Memory: at most REPLAY_WINDOW numbers per node.
    """

    def __init__(self) -> None:
        self._highest: dict[int, int] = {}
        self._seen: dict[int, set[int]] = {}

    def admit(self, node: int, number: int) -> bool:
        highest = self._highest.get(node, 0)
        seen = self._seen.setdefault(node, set())
        if number <= highest - REPLAY_WINDOW or number in seen:
            return False
        seen.add(number)
        if number > highest:
            self._highest[node] = number
            seen.difference_update({n for n in seen if n <= number - REPLAY_WINDOW})
        return True


class _RejectionLog:
    """Logs rejections without letting a flood of them flood the log."""

    _FIRST = 20
    _EVERY = 100

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def __call__(self, client: str, status: int, why: str) -> None:
        with self._lock:
            self._count += 1
            count = self._count
        if count <= self._FIRST or count % self._EVERY == 0:
            logger.warning(
                "coordination: rejected a message from %s (%d): %s [%d rejected so far]",
                client,
                status,
                why,
                count,
            )


def _allow_descriptors(wanted: int) -> None:
    """Raise this process's open-file limit towards ``wanted`` (one socket per worker)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < wanted:
        logger.warning(
            "coordination: open-file limit %d is below the %d this job's long polls need",
            soft,
            wanted,
        )


class HeadCoordinator(Coordinator):
    """Rank 0: keeps the board and serves it.

    Binds its port when built, so a taken port fails before the command starts.
    """

    def __init__(
        self, sky_env: SkyPilotEnv, token: bytes, config: CoordinationConfig, state_dir: Path
    ) -> None:
        super().__init__(sky_env, token, config, state_dir)
        self.board = _Board(sky_env.num_nodes)
        self.rejections = _RejectionLog()
        self.session = new_session()
        self._fresh = _Freshness()
        # Set on the server's thread only; long polls wait for them.
        self._news = asyncio.Event()
        self._settled = asyncio.Event()
        self.board.on_change = self._board_changed
        max_pending = max(MIN_PENDING, 2 * sky_env.num_nodes)
        _allow_descriptors(2 * sky_env.num_nodes + max_pending + _SPARE_FDS)
        host = config.bind_host or sky_env.node_ip
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, config.port), family=family)
        except OSError as exc:
            raise CoordinationError(
                f"cannot serve coordination on {host}:{config.port}: {exc.strerror or exc}; "
                "another process holds the port, or the address is not this node's "
                "(choose another coordination port)"
            ) from None
        limits = Limits(config.request_deadline, config.max_message_bytes, max_pending)
        self._server = EventLoopServer(sock, self._answer, limits, self.rejections)
        self._address = sock.getsockname()[:2]
        self._started = False
        self._stopped = False

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._address
        return str(host), int(port)

    @property
    def decision(self) -> NodeEnd | None:
        return self.board.decision

    def start(self) -> None:
        if self._started or self._stopped:
            return
        self._started = True
        self.board.start(HEAD_RANK)
        self._server.start()
        logger.info(
            "coordination: serving %s:%d for %d nodes", *self.address, self.sky_env.num_nodes
        )

    def peer_verdict(self, now: float) -> Verdict | None:
        return self._peer_failed()

    def report_end(self, end: NodeEnd) -> NodeEnd | None:
        # An attempt can end before its command starts (runtime budget already
        # spent): serve anyway, so the workers learn that decision too.
        self.start()
        decision = self.board.end(end)
        if not self.board.wait_all_ended(self.config.linger):
            logger.warning(
                "coordination: not every worker reported its end within %gs; "
                "those still running stop when the head is unreachable",
                self.config.linger,
            )
        return decision

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.board.close()
        self._server.stop()
        self._write_state({"head": True, **self.board.to_json()})

    # ------------------------------------------------------------------ the server's thread

    def _board_changed(self) -> None:
        if self.board.has_news():
            self._server.call_soon(self._news.set)
        if self.board.settled():
            self._server.call_soon(self._settled.set)

    async def _answer(self, request: Request) -> Answer:
        try:
            seal, sender = self._authenticate(request)
            payload = await self._handle(request, sender)
        except _Rejected as rejected:
            self.rejections(request.client, rejected.status, str(rejected))
            return Answer.error(rejected.status, str(rejected))
        body = json.dumps(payload).encode()
        return Answer(200, body, {SIGNATURE_HEADER: seal.answer_signature(self._token, body)})

    def _authenticate(self, request: Request) -> tuple[Seal, int]:
        """The request's seal and sender, once its signature, session and number all hold.

        A join has no sender yet (-1): it asks for the session, and answering it changes
        nothing.
        """
        headers = request.headers
        session = headers.get(SESSION_HEADER.lower(), "")
        nonce = headers.get(NONCE_HEADER.lower(), "")
        seal = Seal.of(self._token, session, nonce, request.method, request.target, request.body)
        given = headers.get(SIGNATURE_HEADER.lower(), "")
        if not hmac.compare_digest(given.encode(), seal.signature.encode()):
            raise _Rejected(401, "missing or wrong signature")
        if urlsplit(request.target).path == HELLO_PATH:
            return seal, -1
        if session != self.session:
            raise _Rejected(
                403, "signed for another attempt of the job: a replay, or a worker to re-join"
            )
        try:
            node, number = parse_nonce(nonce)
            node_field({"node": node}, self.sky_env.num_nodes)
        except ValueError as exc:
            raise _Rejected(400, str(exc)) from None
        if not self._fresh.admit(node, number):
            raise _Rejected(409, f"replayed message: node {node}'s request {number} came before")
        return seal, node

    async def _handle(self, request: Request, sender: int) -> dict[str, Any]:
        url = urlsplit(request.target)
        num_nodes = self.sky_env.num_nodes
        try:
            if request.method == "GET" and url.path == HELLO_PATH:
                return {"session": self.session}
            if request.method == "GET" and url.path == "/v1/state":
                query = {key: values[0] for key, values in parse_qs(url.query).items()}
                self._sender({"node": int(query.get("node", "-1"))}, sender)
                wait = min(max(float(query.get("wait", "0")), 0.0), self.config.long_poll)
                # A worker past its own end waits at the exit barrier; others for news.
                barrier = query.get("until") == "settled"
                ready, event = (
                    (self.board.settled, self._settled)
                    if barrier
                    else (self.board.has_news, self._news)
                )
                if wait > 0 and not ready():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(event.wait(), wait)
                return self.board.state()
            if request.method == "POST" and url.path in ("/v1/start", "/v1/end"):
                data = json.loads(request.body)
                if not isinstance(data, dict):
                    raise ValueError("a message must be a JSON object")
                if url.path == "/v1/start":
                    self.board.start(self._sender(data, sender))
                    return {"ok": True}
                end = NodeEnd.from_json(data, num_nodes)
                self._sender({"node": end.node}, sender)
                decision = self.board.end(end)
                return {"decision": None if decision is None else decision.to_json()}
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Rejected(400, f"malformed {url.path} message: {exc}") from None
        raise _Rejected(404, f"no such endpoint: {request.method} {url.path}")

    def _sender(self, data: dict[str, Any], sender: int) -> int:
        """The message's node, which must be the node that numbered and signed it."""
        node = node_field(data, self.sky_env.num_nodes)
        if node != sender:
            raise ValueError(f"node {node} in a message numbered by node {sender}")
        return node
