"""(d) of ``benchmarks/distributed.py``: the head's endpoint under a 1,024-node job's load.

The head is a real ``skyguard run`` as rank 0 of a 1,026-node job on loopback
(every ``SKYPILOT_NODE_IPS`` entry is 127.0.0.1). This process simulates the
workers with asyncio, speaking the real protocol (join, start, signed and
numbered long polls): 1,024 that follow the head and one that reports the
hang. Optionally a crowd of slow senders joins them: each opens a connection,
sends a request line and then one byte every 3 s, and comes back when the head
drops it.

Once every follower's long poll is in flight and the load has been held past
two request deadlines, the reporter sends its hang (``POST /v1/end``).
Measured: from that report leaving to each follower's long poll returning with
the decision (median and slowest of the 1,024, in this process's clock), the
head runner's threads and resident memory (psutil, every 0.1 s) idle and under
load, and its open descriptors. The followers then report their ends, so the
head's runner exits (75: it was stopped as ``peer_failed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from skyguard_run import runner_argv

from devops.skypilot.node.coordination.protocol import Seal, hello_target, task_token

#: Workers that follow the head, each holding a long poll; one more reports the hang.
FOLLOWERS = 1024
SLOW_SENDERS = 512
#: Seconds between two bytes of one slow sender (the shape of the attack in the issue).
TRICKLE = 3.0
#: The head's whole-request deadline (the default); the load is held past two of them.
HOLD = 12.0
SECRET = "benchmark-coordination-secret"
TASK_ID = "sky-managed-bench-load_0"
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class LoadTrial:
    slow_senders: int
    #: Seconds from worker 1's report to each other worker learning the decision.
    latencies: list[float]
    idle_threads: int
    peak_threads: int
    idle_rss_mb: float
    peak_rss_mb: float
    peak_fds: int
    slow_dropped: int
    head_exit: int


class _Worker:
    """One simulated worker: the same requests, signatures and numbers as worker.py."""

    def __init__(self, node: int, port: int, token: bytes) -> None:
        self.node, self.port, self.token = node, port, token
        self.session = ""
        self._number = 0
        self.decided_at: float | None = None

    async def request(self, method: str, target: str, body: bytes = b"") -> dict[str, object]:
        if target.startswith("/v1/hello"):
            seal = Seal.of(self.token, "", f"{self.node}.0", method, target, body)
        else:
            self._number += 1
            nonce = f"{self.node}.{self._number}"
            seal = Seal.of(self.token, self.session, nonce, method, target, body)
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            head = [f"{method} {target} HTTP/1.1", "Host: head", f"Content-Length: {len(body)}"]
            head += [f"{name}: {value}" for name, value in seal.headers().items()]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            raw = await reader.read()
        finally:
            writer.close()
        header, _, answer = raw.partition(b"\r\n\r\n")
        status = header.split(b" ", 2)[1]
        match = re.search(rb"X-Skyguard-Signature: (\w+)", header)
        if status != b"200" or not match:
            raise RuntimeError(f"node {self.node}: {header[:200]!r} {answer[:200]!r}")
        if match.group(1).decode() != seal.answer_signature(self.token, answer):
            raise RuntimeError(f"node {self.node}: the answer's signature is wrong")
        data: dict[str, object] = json.loads(answer)
        return data

    async def follow(self, polling: asyncio.Event, started: list[int]) -> None:
        answer = await self.request("GET", hello_target(self.node))
        self.session = str(answer["session"])
        await self.request("POST", "/v1/start", json.dumps({"node": self.node}).encode())
        while True:
            started.append(self.node)
            if len(started) >= FOLLOWERS:
                polling.set()
            answer = await self.request("GET", f"/v1/state?node={self.node}&wait=10")
            if answer.get("decision"):
                self.decided_at = time.monotonic()
                return

    async def end(self, reason: str, exit_code: int) -> None:
        body = {"node": self.node, "reason": reason, "exit_code": exit_code, "detail": "bench"}
        await self.request("POST", "/v1/end", json.dumps(body).encode())


async def _slow_sender(port: int, stop: asyncio.Event, dropped: list[int]) -> None:
    while not stop.is_set():
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        try:
            writer.write(b"POST /v1/end HTTP/1.1\r\nX-Slow: ")
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), TRICKLE)
                writer.write(b"x")
                await writer.drain()
        except OSError:
            dropped.append(1)  # the head dropped it: come back, as an attacker would
        finally:
            writer.close()


class _Sampler:
    """The head runner's threads, resident memory and descriptors, every 0.1 s."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.threads: list[int] = []
        self.rss_mb: list[float] = []
        self.fds: list[int] = []

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.threads.append(self.process.num_threads())
            self.rss_mb.append(self.process.memory_info().rss / 2**20)
            self.fds.append(self.process.num_fds())

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sample()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)


async def _drive(port: int, sampler: _Sampler, slow_senders: int) -> tuple[list[float], int]:
    """The load, the decision; each follower's latency and how often slow senders were dropped."""
    token = task_token(SECRET.encode(), TASK_ID)
    followers = [_Worker(node, port, token) for node in range(1, FOLLOWERS + 1)]
    reporter = _Worker(FOLLOWERS + 1, port, token)
    stop, polling = asyncio.Event(), asyncio.Event()
    dropped: list[int] = []
    started: list[int] = []
    crowd = [asyncio.create_task(_slow_sender(port, stop, dropped)) for _ in range(slow_senders)]
    sampling = asyncio.create_task(sampler.run(stop))
    follows = [asyncio.create_task(worker.follow(polling, started)) for worker in followers]
    await asyncio.wait_for(polling.wait(), START_TIMEOUT)
    await asyncio.sleep(HOLD)
    answer = await reporter.request("GET", hello_target(reporter.node))
    reporter.session = str(answer["session"])
    reported = time.monotonic()
    await reporter.end("heartbeat_timeout", 75)
    await asyncio.wait_for(asyncio.gather(*follows), START_TIMEOUT)
    stop.set()
    await asyncio.gather(*crowd, sampling)
    # As real workers do: they report their ends, so the head stops lingering.
    await asyncio.gather(*(worker.end("peer_failed", 75) for worker in followers))
    latencies = [w.decided_at - reported for w in followers if w.decided_at is not None]
    return latencies, len(dropped)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * (FOLLOWERS + SLOW_SENDERS) + 256
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def load_trial(tmp: Path, env: dict[str, str], port: int, slow_senders: int) -> LoadTrial:
    """One head runner under the simulated job; ``env``: the benchmark's tagged base env."""
    _raise_fd_limit()
    nodes = FOLLOWERS + 2
    env = {
        **env,
        "SKYPILOT_NODE_RANK": "0",
        "SKYPILOT_NUM_NODES": str(nodes),
        "SKYPILOT_NODE_IPS": "\n".join(["127.0.0.1"] * nodes),
        "SKYPILOT_TASK_ID": TASK_ID,
        "SKYGUARD_COORD_SECRET": SECRET,
        "SKYGUARD_NOTIFY_ENABLED": "false",
    }
    argv = runner_argv(tmp / "state", "--coord-port", str(port), "--grace", "5")
    argv += ["sleep", "600"]
    log = tmp / "head.log"
    with log.open("wb") as out:
        head = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "coordination: serving" not in log.read_text(errors="replace"):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the head did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        sampler = _Sampler(head.pid)
        sampler.sample()
        idle_threads, idle_rss = sampler.threads[0], sampler.rss_mb[0]
        latencies, dropped = asyncio.run(_drive(port, sampler, slow_senders))
        code = head.wait(timeout=START_TIMEOUT)
    finally:
        with contextlib.suppress(OSError):
            head.kill()
        head.wait()
    if code != 75 or len(latencies) != FOLLOWERS:
        raise RuntimeError(f"head exited {code}, {len(latencies)} decisions:\n{log.read_text()}")
    return LoadTrial(
        slow_senders=slow_senders,
        latencies=latencies,
        idle_threads=idle_threads,
        peak_threads=max(sampler.threads),
        idle_rss_mb=idle_rss,
        peak_rss_mb=max(sampler.rss_mb),
        peak_fds=max(sampler.fds),
        slow_dropped=dropped,
        head_exit=code,
    )


def summary(trial: LoadTrial) -> dict[str, float]:
    return {
        "median": statistics.median(trial.latencies),
        "slowest": max(trial.latencies),
        "threads": trial.peak_threads,
        "idle_threads": trial.idle_threads,
        "rss": trial.peak_rss_mb,
        "idle_rss": trial.idle_rss_mb,
        "fds": trial.peak_fds,
        "dropped": trial.slow_dropped,
    }
