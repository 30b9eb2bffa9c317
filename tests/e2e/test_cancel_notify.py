"""`sky jobs cancel` of a running managed job: exactly one `cancelled` message.

The runner on the node records a cancel (SIGTERM within its grace) and leaves its
announcement to the jobs controller (the recipe's SKYGUARD_EVENTS_FROM_CONTROLLER),
whose event_callback (`skyguard notify-event`) announces it when the job is
CANCELLED: the one message is the controller's.
The webhook is a loopback Discord server on this machine, which both the node
(Slurm, same host) and the controller (consolidation mode, in the API server)
reach; its URL goes in as a `--secret`, which SkyPilot does not pass to the callback.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path

import pytest

from tests.notifications.notify_fakes import LoopbackServer, discord_ok, webhook_url

from .conftest import POLL_SECONDS, TERMINAL, Cluster, Jobs

pytestmark = pytest.mark.e2e

#: Guards against a hang only: launch to RUNNING is ~1 min, cancel to CANCELLED ~1 min.
RUNNING_TIMEOUT = 600.0
CALLBACK_TIMEOUT = 120.0
CALLBACK_LOGS = Path.home() / "sky_logs" / "managed_job_event"


def state_dirs(cluster: Cluster, name: str) -> list[Path]:
    """The head node's state dir of the run named ``name`` (run key ``<name>-<8 hex>``)."""
    pattern = re.compile(rf"{re.escape(name)}-[0-9a-f]{{8}}")
    return [
        path / "node-0" for path in cluster.state_root.iterdir() if pattern.fullmatch(path.name)
    ]


def _callback_said(job_id: int, status: str) -> str:
    """What `skyguard notify-event` printed for ``status`` (SkyPilot's callback log)."""
    log = CALLBACK_LOGS / f"jobs-callback-{job_id}-0.log"
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(line for line in text.splitlines() if f"notify-event: {status}" in line)


def test_cancel_of_a_running_job_sends_exactly_one_cancelled_message(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = LoopbackServer([discord_ok])
    token = "e2etok" + secrets.token_hex(16)
    jobs = Jobs(cluster)
    try:
        # `skyguard launch --secret NAME` reads the value from the local environment.
        monkeypatch.setenv("SKYGUARD_DISCORD_WEBHOOK_URL", webhook_url(server, token))
        jobs.submit(
            "cancel",
            "--secret",
            "SKYGUARD_DISCORD_WEBHOOK_URL",
            "--",
            "python",
            "examples/train.py",
            "--steps",
            "100000",
        )
        job = jobs.jobs["cancel"]
        deadline = time.monotonic() + RUNNING_TIMEOUT
        # Cancel only once the runner is running its command (its checkpoint is there).
        while not any((path / "attempt.json").exists() for path in state_dirs(cluster, job.name)):
            jobs.poll()
            assert job.status not in TERMINAL, f"{job.name} ended {job.status} before the cancel"
            assert time.monotonic() < deadline, f"{job.name} not running after {RUNNING_TIMEOUT}s"
            time.sleep(POLL_SECONDS)
        cluster.run([str(cluster.sky), "jobs", "cancel", "-y", str(job.job_id)])
        jobs.wait("cancel", timeout=RUNNING_TIMEOUT)
        assert job.status == "CANCELLED"
        # The CANCELLED callback runs after the status is set: wait for its word.
        deadline = time.monotonic() + CALLBACK_TIMEOUT
        while not _callback_said(job.job_id, "CANCELLED"):
            assert time.monotonic() < deadline, "no CANCELLED line in the callback's log"
            time.sleep(POLL_SECONDS)
        said = _callback_said(job.job_id, "CANCELLED")
        titles = [r.json["embeds"][0]["title"].replace("\\", "") for r in server.requests]
        assert len(titles) == 1 and titles[0].endswith(": cancelled"), (
            f"messages: {titles}; callback said: {said}"
        )
        assert "cancelled/signalled: discord: sent" in said, said
        # The task's secrets were read from the controller's record of the job.
        assert not _callback_said(job.job_id, "cannot read the job's secrets")
        assert token not in said
        (state_dir,) = state_dirs(cluster, job.name)
        sent = json.loads((state_dir / "notifications.json").read_text())["sent"]
        record = state_dir / "termination.json"
        if record.exists():  # the runner got its grace: it recorded the cancel, sent nothing
            assert json.loads(record.read_text())["announced_by"] == "controller"
        assert [(e["phase"], e["channel"]) for e in sent if e["phase"] == "cancelled"] == [
            ("cancelled", "discord")
        ]
    finally:
        jobs.cancel_unfinished()
        server.stop()
