"""A worker's side of coordination: ranks > 0 report to the head and follow its board."""

from __future__ import annotations

import hmac
import http.client
import itertools
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from devops.skypilot.common.termination import TerminationReason, Verdict
from devops.skypilot.node.coordination.protocol import (
    HEAD_RANK,
    SIGNATURE_HEADER,
    CoordinationConfig,
    Coordinator,
    NodeEnd,
    Seal,
    fit,
    hello_target,
)
from devops.skypilot.node.environment import SkyPilotEnv

logger = logging.getLogger(__name__)

#: Pause between a worker's attempts to reach the head.
_RETRY_PAUSE = 0.5


class _BadAnswer(Exception):
    """The head's answer was unsigned, oversized or not what the protocol says."""


class _StaleSession(_BadAnswer):
    """The head serves another session than the one this worker joined: join again."""


class WorkerCoordinator(Coordinator):
    """Ranks > 0: report to the head and long-poll its board from a thread."""

    def __init__(
        self,
        sky_env: SkyPilotEnv,
        token: bytes,
        config: CoordinationConfig,
        state_dir: Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(sky_env, token, config, state_dir)
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: http.client.HTTPConnection | None = None
        #: The head's session once joined; requests are numbered within it.
        self._session: str | None = None
        self._joined = False
        self._numbers = itertools.count(1)
        self._decision: NodeEnd | None = None
        self._head_end: NodeEnd | None = None
        self._started_at: float | None = None
        self._last_contact: float | None = None
        self._last_error = "no answer yet"

    @property
    def head_address(self) -> tuple[str, int]:
        return self.sky_env.head_ip, self.config.port

    @property
    def decision(self) -> NodeEnd | None:
        with self._lock:
            return self._decision

    def start(self) -> None:
        if self._thread is not None:
            return
        self._started_at = self._clock()
        self._thread = threading.Thread(
            target=self._follow, name="skyguard-coordination", daemon=True
        )
        self._thread.start()

    def peer_verdict(self, now: float) -> Verdict | None:
        verdict = self._peer_failed()
        if verdict is not None or self._started_at is None:
            return verdict
        with self._lock:
            if self._head_end is not None:
                return None  # the head ended well and stopped serving: silence is expected
            reference = self._last_contact
            if reference is None:
                reference = self._started_at + self.config.startup_grace
            error = self._last_error
        silent = now - reference
        if silent <= self.config.unreachable_timeout:
            return None
        host, port = self.head_address
        return Verdict(
            TerminationReason.PEER_FAILED,
            f"head node {HEAD_RANK} ({host}:{port}) unreachable for {silent:.0f}s: {error}",
        )

    def report_end(self, end: NodeEnd) -> NodeEnd | None:
        body = fit(end, self.config.max_message_bytes)
        with self._lock:
            head_gone = self._head_end is not None
        # Once the head has ended it stops serving after its linger: one quick
        # try, not the whole report timeout against a closed port.
        budget = min(self.config.report_timeout, 0.5) if head_gone else self.config.report_timeout
        deadline = self._clock() + budget
        try:
            for attempt in Retrying(
                stop=stop_after_delay(budget),
                wait=wait_fixed(0.2),
                retry=retry_if_exception_type((OSError, http.client.HTTPException, _BadAnswer)),
                reraise=True,
            ):
                with attempt:
                    timeout = max(min(deadline - self._clock(), 2.0), 0.1)
                    session = self._session or self._join(timeout)
                    answer = self._request(session, "POST", "/v1/end", body, timeout)
        except (OSError, http.client.HTTPException, _BadAnswer) as exc:
            logger.warning("coordination: could not report this node's end to the head: %s", exc)
            return None
        decision = answer.get("decision")
        if isinstance(decision, dict):
            logger.info("coordination: the head's decision: %s", decision)
            with self._lock:
                self._decision = NodeEnd.from_json(decision, self.sky_env.num_nodes)
        # The head answered, so it serves until it settles: wait at the barrier even
        # when its own end is known (it waits for every node's end, then notifies).
        self._wait_settled(session)
        return self.decision

    def _wait_settled(self, session: str) -> None:
        """The exit barrier: until every node has ended, at most ``linger`` seconds.

        On Slurm the first node to exit non-zero has every other node SIGTERMed
        (``srun --kill-on-bad-exit``): a node that exits while another is still
        stopping its command could turn that one's end into a cancel. A head that
        stops answering has settled or given up: there is nothing left to wait for.
        """
        deadline = self._clock() + self.config.linger
        target = f"/v1/state?node={self.node}&until=settled&wait="
        while (left := deadline - self._clock()) > 0:
            # The head answers every poll when it settles or stops (a reset, if it
            # stops before reading it): a long poll, not a sleep, bounds the wait.
            wait = min(left, self.config.long_poll)
            try:
                answer = self._request(session, "GET", f"{target}{wait:g}", b"", wait + 2.0)
            except (OSError, http.client.HTTPException, _BadAnswer) as exc:
                logger.debug("coordination: the head left the exit barrier: %s", exc)
                return
            if answer.get("settled") is True:
                return
        logger.warning(
            "coordination: not every node ended within %gs; exiting anyway",
            self.config.linger,
        )

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            conn = self._conn
        if conn is not None and conn.sock is not None:
            # Unblocks a long poll in flight; close() alone would not wake the reader.
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError as exc:
                logger.debug("coordination: closing the long poll: %s", exc)
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        with self._lock:
            view = {
                "head": False,
                "decision": None if self._decision is None else self._decision.to_json(),
                "head_end": None if self._head_end is None else self._head_end.to_json(),
            }
        self._write_state(view)

    # ------------------------------------------------------------------ transport

    def _join(self, timeout: float) -> str:
        """Ask the head for its session (one per attempt); every request then carries it."""
        answer = self._request("", "GET", hello_target(self.node), b"", timeout)
        session = answer.get("session")
        if not isinstance(session, str) or not session:
            raise _BadAnswer("the head's answer to the join has no session")
        with self._lock:
            first, self._joined = not self._joined, True
            self._session = session
        if first:
            logger.info("coordination: following the head at %s:%d", *self.head_address)
        return session

    def _request(
        self,
        session: str,
        method: str,
        target: str,
        body: bytes,
        timeout: float,
        *,
        interruptible: bool = False,
    ) -> dict[str, Any]:
        """One signed request and its checked answer.

        ``interruptible``: :meth:`stop` may cut it short (the follower's long poll).
        """
        with self._lock:
            nonce = f"{self.node}.{next(self._numbers)}"
        seal = Seal.of(self._token, session, nonce, method, target, body)
        host, port = self.head_address
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        if interruptible:
            with self._lock:
                self._conn = conn
        try:
            headers = {**seal.headers(), "Content-Type": "application/json"}
            conn.request(method, target, body=body if method == "POST" else None, headers=headers)
            response = conn.getresponse()
            data = response.read(self.config.max_message_bytes * 4 + 1)
            if len(data) > self.config.max_message_bytes * 4:
                raise _BadAnswer("the head's answer is oversized")
            if response.status == 403 and session:
                with self._lock:
                    if self._session == session:
                        self._session = None
                raise _StaleSession(f"the head answered 403: {data[:200]!r}")
            if response.status != 200:
                raise _BadAnswer(f"the head answered {response.status}: {data[:200]!r}")
            expected = seal.answer_signature(self._token, data)
            answer_signature = response.getheader(SIGNATURE_HEADER, "")
            if not hmac.compare_digest(answer_signature.encode(), expected.encode()):
                raise _BadAnswer("the answer is not signed with this task's token")
            try:
                answer = json.loads(data)
            except ValueError:
                raise _BadAnswer("the head's answer is not JSON") from None
            if not isinstance(answer, dict):
                raise _BadAnswer("the head's answer is not a JSON object")
            with self._lock:
                self._last_contact = self._clock()
            return answer
        finally:
            if interruptible:
                with self._lock:
                    self._conn = None
            conn.close()

    def _follow(self) -> None:
        """The thread: join, announce the start, then long-poll until there is news or stop."""
        announced = False
        start_body = json.dumps({"node": self.node}).encode()
        wait = self.config.long_poll
        while not self._stop.is_set():
            try:
                session = self._session or self._join(timeout=5.0)
                if not announced:
                    self._request(session, "POST", "/v1/start", start_body, timeout=5.0)
                    announced = True
                answer = self._request(
                    session,
                    "GET",
                    f"/v1/state?node={self.node}&wait={wait:g}",
                    b"",
                    timeout=wait + 5.0,
                    interruptible=True,
                )
                if self._learn(answer):
                    return
            except (OSError, http.client.HTTPException, _BadAnswer, ValueError) as exc:
                with self._lock:
                    self._last_error = str(exc) or type(exc).__name__
                logger.debug("coordination: head not reachable: %s", exc)
                self._stop.wait(_RETRY_PAUSE)

    def _learn(self, answer: Mapping[str, Any]) -> bool:
        """Take in the head's state; True when there is nothing more to wait for."""
        num_nodes = self.sky_env.num_nodes
        decision = answer.get("decision")
        head_end = answer.get("head_end")
        with self._lock:
            if decision is not None:
                self._decision = NodeEnd.from_json(decision, num_nodes)
            if head_end is not None:
                self._head_end = NodeEnd.from_json(head_end, num_nodes)
            done = self._decision is not None or self._head_end is not None
        if decision is not None:
            logger.warning("coordination: %s", self._decision.describe() if self._decision else "")
        return done
