"""A signal that reaches a worker node first is the jobs controller's to announce too.

A preemption or ``sky jobs cancel`` may SIGTERM a worker before the head: the worker
ends ``signalled``, the job's decision, and the head ends ``peer_failed`` relaying it.
Where the recipe wires skyguard's callback in a managed job, the head records that end
as the controller's to announce (the controller announces the preemption or cancel
itself), so one end is not announced twice. Two real ``skyguard run`` processes on
loopback, coordinating for real, a real SIGTERM, one loopback Discord.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable

import psutil

from tests.distributed.runners import JOINED, RunnerCluster
from tests.notifications.notify_fakes import LoopbackServer, discord_ok, webhook_url
from tests.notifications.test_notify_event import discord_messages
from tests.notifications.test_notify_left_to_controller import MANAGED, MARKER

Serve = Callable[..., LoopbackServer]
LEFT = "retrying/peer_failed: announcement left to SkyPilot's jobs controller"


def signal_the_worker(runners: RunnerCluster, env: dict[str, str]) -> dict[int, int]:
    """Two nodes; node 1's runner is SIGTERMed once its command runs. The exit codes."""
    runners.start(2, {}, env)
    runners.wait_for_output(1, JOINED)
    worker = psutil.Process(runners.processes[1].pid)
    deadline = time.monotonic() + 30  # a guard against hanging
    while not worker.children():
        assert time.monotonic() < deadline, "the worker never started its command"
        time.sleep(0.02)
    worker.send_signal(signal.SIGTERM)
    return runners.wait()


def test_a_worker_signalled_in_a_managed_job_is_left_to_the_controller(
    runners: RunnerCluster, serve: Serve, webhook_token: str
) -> None:
    chat = serve([discord_ok])
    env = {"SKYGUARD_DISCORD_WEBHOOK_URL": webhook_url(chat, webhook_token), **MANAGED, **MARKER}
    codes = signal_the_worker(runners, env)
    assert codes == {0: 75, 1: 75}, {r: runners.output(r)[-2000:] for r in codes}
    worker, head = runners.record(1), runners.record(0)
    assert worker["reason"] == "signalled" and worker["announced_by"] == "controller"
    assert head["reason"] == "peer_failed", head
    assert head["detail"].startswith("node 1 ended: signalled (exit 75)")
    assert head["announced_by"] == "controller"
    assert LEFT in runners.output(0)
    assert chat.requests == []


def test_without_the_callback_the_head_announces_the_workers_signal(
    runners: RunnerCluster, serve: Serve, webhook_token: str
) -> None:
    chat = serve([discord_ok])
    env = {"SKYGUARD_DISCORD_WEBHOOK_URL": webhook_url(chat, webhook_token), **MANAGED}
    codes = signal_the_worker(runners, env)
    assert codes == {0: 75, 1: 75}, {r: runners.output(r)[-2000:] for r in codes}
    head = runners.record(0)
    assert head["reason"] == "peer_failed" and head["announced_by"] == "runner"
    assert LEFT not in runners.output(0)
    assert [title.rsplit(": ", 1)[-1] for title in discord_messages(chat)] == ["retrying"]
    assert "`peer_failed`" in json.dumps(chat.requests[0].json)
