"""The head's side of coordination: rank 0 keeps the board of node ends and serves it."""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from devops.skypilot.common.termination import Verdict
from devops.skypilot.node.coordination.protocol import (
    HEAD_RANK,
    SIGNATURE_HEADER,
    CoordinationConfig,
    CoordinationError,
    Coordinator,
    NodeEnd,
    node_field,
    sign,
)
from devops.skypilot.node.environment import SkyPilotEnv

logger = logging.getLogger(__name__)


class _Rejected(Exception):
    """A message the head will not act on; ``status`` is the HTTP answer."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class _Board:
    """What the head knows of the attempt; shared by the HTTP threads and the runner."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.started: set[int] = set()
        self.ends: dict[int, NodeEnd] = {}
        self.decision: NodeEnd | None = None
        #: Workers that were sent the decision or the head's end.
        self.informed: set[int] = set()
        self.closing = False

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
            return self.decision

    def _news(self) -> bool:
        return self.decision is not None or HEAD_RANK in self.ends or self.closing

    def state_for(self, node: int, wait: float) -> dict[str, Any]:
        """The decision and the head's end, waiting up to ``wait`` s for either."""
        with self._changed:
            self._changed.wait_for(self._news, timeout=wait)
            head_end = self.ends.get(HEAD_RANK)
            if self.decision is not None or head_end is not None:
                self.informed.add(node)
                self._changed.notify_all()
            return {
                "decision": None if self.decision is None else self.decision.to_json(),
                "head_end": None if head_end is None else head_end.to_json(),
            }

    def wait_workers_ended(self, num_nodes: int, timeout: float) -> bool:
        """Until every worker has reported its end; False on timeout.

        Every worker of the job, not only those that announced themselves: one
        that starts late must still find the head serving. Learning the outcome
        is not enough: a worker that learned it still reports its end, and the
        head's record should hold every node's end.
        """
        workers = set(range(num_nodes)) - {HEAD_RANK}

        def settled() -> bool:
            return not workers - self.ends.keys()

        with self._changed:
            return self._changed.wait_for(settled, timeout=timeout)

    def close(self) -> None:
        with self._changed:
            self.closing = True
            self._changed.notify_all()

    def to_json(self) -> dict[str, Any]:
        with self._changed:
            return {
                "decision": None if self.decision is None else self.decision.to_json(),
                "started": sorted(self.started),
                "ends": {str(node): end.to_json() for node, end in sorted(self.ends.items())},
            }


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


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], head: HeadCoordinator) -> None:
        self.head = head
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that vanished or stalled mid-request: not worth a traceback.
        logger.debug("coordination: connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    #: Seconds a sender may take to send its request: a stalled one cannot hold a thread.
    timeout = 5.0
    server_version = "skyguard-coordination"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("coordination http: " + format, *args)

    def do_GET(self) -> None:
        self._serve(b"")

    def do_POST(self) -> None:
        head = self.server.head
        length = self.headers.get("Content-Length")
        try:
            size = int(length) if length is not None else -1
        except ValueError:
            size = -1
        if size < 0:
            self._reject(411, "missing or bad Content-Length")
            return
        if size > head.config.max_message_bytes:
            self._reject(413, f"{size} bytes > {head.config.max_message_bytes}")
            return
        self._serve(self.rfile.read(size))

    def _serve(self, body: bytes) -> None:
        head = self.server.head
        signature = self.headers.get(SIGNATURE_HEADER, "")
        try:
            payload = head.handle(self.command, self.path, body, signature)
        except _Rejected as rejected:
            self._reject(rejected.status, str(rejected))
            return
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header(SIGNATURE_HEADER, head.sign_response(signature, data))
        self.end_headers()
        self.wfile.write(data)

    def _reject(self, status: int, why: str) -> None:
        self.server.head.rejections(self.client_address[0], status, why)
        data = json.dumps({"error": why}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


class HeadCoordinator(Coordinator):
    """Rank 0: keeps the board and serves it.

    Binds its port when built, so a taken port fails before the command starts.
    """

    def __init__(
        self, sky_env: SkyPilotEnv, token: bytes, config: CoordinationConfig, state_dir: Path
    ) -> None:
        super().__init__(sky_env, token, config, state_dir)
        self.board = _Board()
        self.rejections = _RejectionLog()
        host = config.bind_host or sky_env.node_ip
        try:
            self._server = _Server((host, config.port), self)
        except OSError as exc:
            raise CoordinationError(
                f"cannot serve coordination on {host}:{config.port}: {exc.strerror or exc}; "
                "another process holds the port, or the address is not this node's "
                "(choose another coordination port)"
            ) from None
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def decision(self) -> NodeEnd | None:
        return self.board.decision

    def start(self) -> None:
        if self._thread is not None or self._stopped:
            return
        self.board.start(HEAD_RANK)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="skyguard-coordination",
            daemon=True,
        )
        self._thread.start()
        logger.info(
            "coordination: serving %s:%d for %d nodes", *self.address, self.sky_env.num_nodes
        )

    def peer_verdict(self, now: float) -> Verdict | None:
        return self._peer_failed()

    def report_end(self, end: NodeEnd) -> None:
        # An attempt can end before its command starts (runtime budget already
        # spent): serve anyway, so the workers learn that decision too.
        self.start()
        self.board.end(end)
        if not self.board.wait_workers_ended(self.sky_env.num_nodes, self.config.linger):
            logger.warning(
                "coordination: not every worker reported its end within %gs; "
                "those still running stop when the head is unreachable",
                self.config.linger,
            )

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.board.close()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=2.0)
        self._server.server_close()
        self._write_state({"head": True, **self.board.to_json()})

    def sign_response(self, request_signature: str, body: bytes) -> str:
        return sign(self._token, b"response", request_signature.encode(), body)

    def handle(self, method: str, target: str, body: bytes, signature: str) -> dict[str, Any]:
        """One authenticated request -> its answer; raises :class:`_Rejected` otherwise."""
        expected = sign(self._token, f"{method} {target}".encode(), body)
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            raise _Rejected(401, "missing or wrong signature")
        url = urlsplit(target)
        num_nodes = self.sky_env.num_nodes
        try:
            if method == "GET" and url.path == "/v1/state":
                query = {key: values[0] for key, values in parse_qs(url.query).items()}
                node = node_field({"node": int(query.get("node", "-1"))}, num_nodes)
                wait = min(max(float(query.get("wait", "0")), 0.0), self.config.long_poll)
                return self.board.state_for(node, wait)
            if method == "POST" and url.path in ("/v1/start", "/v1/end"):
                data = json.loads(body)
                if url.path == "/v1/start":
                    self.board.start(node_field(data if isinstance(data, dict) else {}, num_nodes))
                    return {"ok": True}
                decision = self.board.end(NodeEnd.from_json(data, num_nodes))
                return {"decision": None if decision is None else decision.to_json()}
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Rejected(400, f"malformed {url.path} message: {exc}") from None
        raise _Rejected(404, f"no such endpoint: {method} {url.path}")
