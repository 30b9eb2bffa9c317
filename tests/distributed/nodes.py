"""A stand-in for one node's runner, for coordination tests with real processes on loopback.

Child side (``python -m tests.distributed.nodes``): reads the fake SkyPilot
variables from its environment, builds the coordination observer and monitor
exactly as the runner does, starts them, then polls the monitor like the
runner's loop. A JSON line on stdin makes the node decide on its own end
(``{"reason": ..., "exit_code": ..., "detail": ...}``). Whatever ends it, it
reports through ``on_end`` and exits with the exit code of its decision.
Events go to stdout as JSON lines.

Test side: :class:`Node` starts one such process and reads its events.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.conftest import PYTHON, REPO, TAG_VAR


def _emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


def _stdin_commands() -> queue.Queue[dict[str, Any]]:
    commands: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        for line in sys.stdin:
            if line.strip():
                commands.put(json.loads(line))

    threading.Thread(target=read, daemon=True).start()
    return commands


def child_main(argv: list[str]) -> int:
    from devops.skypilot.common.lifecycle import JobContext
    from devops.skypilot.common.termination import (
        Decision,
        Outcome,
        Termination,
        TerminationReason,
        decide,
    )
    from devops.skypilot.node.coordination import coordination_from_env
    from devops.skypilot.node.coordination.protocol import CoordinationConfig, CoordinationError
    from devops.skypilot.node.environment import from_env

    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--startup-grace", type=float, default=1.0)
    parser.add_argument("--unreachable-timeout", type=float, default=1.5)
    # Ends as soon as every worker reported; long enough for a loaded machine.
    parser.add_argument("--linger", type=float, default=5.0)
    parser.add_argument("--request-deadline", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # as the runner's CLI
    sky = from_env(os.environ)
    config = CoordinationConfig(
        port=args.port,
        startup_grace=args.startup_grace,
        unreachable_timeout=args.unreachable_timeout,
        linger=args.linger,
        report_timeout=2.0,
        request_deadline=args.request_deadline,
    )
    try:
        built = coordination_from_env(sky, args.state_dir, config=config)
    except CoordinationError as error:
        _emit("error", message=str(error))
        return 2
    assert built is not None
    observer, monitor = built
    ctx = JobContext(
        "coord-test", sky.task_id or "", 1, sky.node_rank, sky.num_nodes, args.state_dir, ""
    )
    observer.on_start(ctx)
    monitor.start(time.monotonic())
    _emit("started", rank=sky.node_rank, head=observer.is_head)
    commands = _stdin_commands()

    def finish(decision: Decision) -> int:
        termination = Termination(
            reason=decision.reason,
            exit_code=decision.exit_code,
            child_exit_code=None,
            signal=None,
            detail=decision.detail,
            monitor=decision.monitor,
            attempt=1,
            started_at="",
            ended_at="",
            duration=0.0,
            node_rank=sky.node_rank,
            task_id=sky.task_id or "",
        )
        observer.on_end(ctx, termination)
        observer.close()  # as the runner does, after every observer's on_end
        _emit("ended", reason=decision.reason.value, exit_code=decision.exit_code)
        return decision.exit_code

    while True:
        with contextlib.suppress(queue.Empty):
            command = commands.get(timeout=0.02)
            reason = TerminationReason(command["reason"])
            return finish(Decision(reason, int(command["exit_code"]), command["detail"], "Test"))
        verdict = monitor.check(time.monotonic())
        if verdict is not None:
            _emit("verdict", reason=verdict.reason.value, detail=verdict.detail)
            # As the runner: the command is stopped (SIGTERM), then decided.
            return finish(decide(Outcome(child_returncode=-15, verdict=verdict)))


class Node:
    """One node process, started with the fake SkyPilot variables of ``rank``."""

    def __init__(
        self,
        rank: int,
        num_nodes: int,
        port: int,
        state_root: Path,
        leak_tag: str,
        *,
        env: dict[str, str] | None = None,
        options: tuple[str, ...] = (),
    ) -> None:
        self.rank = rank
        self.state_dir = state_root / f"node{rank}"
        full_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("SKYPILOT_", "SKYGUARD_"))
        }
        full_env.update(
            {
                TAG_VAR: leak_tag,
                "PYTHONPATH": str(REPO),
                "SKYPILOT_NODE_RANK": str(rank),
                "SKYPILOT_NUM_NODES": str(num_nodes),
                "SKYPILOT_NODE_IPS": "\n".join(["127.0.0.1"] * num_nodes),
                "SKYPILOT_TASK_ID": "sky-managed-coordination-test_0",
                **(env or {}),
            }
        )
        argv = [
            PYTHON,
            "-m",
            "tests.distributed.nodes",
            "--state-dir",
            str(self.state_dir),
            "--port",
            str(port),
            *options,
        ]
        self.process = subprocess.Popen(
            argv,
            env=full_env,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._events.put(json.loads(line))

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line)

    def expect(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        """The next event named ``event``; fails after ``timeout`` (a guard against hangs)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                got = self._events.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                raise AssertionError(
                    f"node {self.rank}: no {event!r} event; stderr:\n{''.join(self.stderr_lines)}"
                ) from None
            if got["event"] == event:
                return got
            if got["event"] == "error":
                raise AssertionError(f"node {self.rank}: {got['message']}")

    def expect_log(self, text: str, timeout: float = 30.0) -> None:
        """Until the node logged ``text``; fails after ``timeout`` (a guard against hangs)."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.stderr_lines)):
            if time.monotonic() > deadline or self.process.poll() is not None:
                stderr = "".join(self.stderr_lines)
                raise AssertionError(f"node {self.rank}: never logged {text!r}; stderr:\n{stderr}")
            time.sleep(0.02)

    def pending(self) -> list[dict[str, Any]]:
        """Events so far not consumed by :meth:`expect`."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def end(self, reason: str, exit_code: int, detail: str) -> None:
        assert self.process.stdin is not None
        command = {"reason": reason, "exit_code": exit_code, "detail": detail}
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
