"""A signal-caused end of a managed job is announced once, by the jobs controller.

The runner sees SIGTERM alike for ``sky jobs cancel`` and a preemption; SkyPilot's
jobs controller knows which. Where the recipe wires skyguard's ``event_callback``
(``SKYGUARD_EVENTS_FROM_CONTROLLER=1``) in a managed job (``SKYPILOT_MANAGED_JOB_ID``),
the runner records the end and leaves its announcement to the controller, whether or
not the controller can see the runner's state. Real ``skyguard run`` processes, real
SIGTERM, the controller's ``announce`` in-process, one loopback Discord for both.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devops.skypilot.common.lifecycle import left_to_controller
from devops.skypilot.common.termination import TerminationReason
from devops.skypilot.common.values import ConfigError
from devops.skypilot.controller import event
from devops.skypilot.controller.skypilot_record import ControllerRecord
from tests.conftest import PYTHON, REPO, SkyguardRunner
from tests.notifications.notify_fakes import LoopbackServer, discord_ok, webhook_url
from tests.notifications.test_notify_event import KEY, TASK_ID, callback_env, discord_messages

Serve = Callable[..., LoopbackServer]
#: What SkyPilot's jobs controller puts in a managed task's envs, and the recipe's marker.
MANAGED = {"SKYPILOT_TASK_ID": TASK_ID, "SKYPILOT_MANAGED_JOB_ID": "7"}
MARKER = {"SKYGUARD_EVENTS_FROM_CONTROLLER": "1"}
LEFT = "cancelled/signalled: announcement left to SkyPilot's jobs controller"
#: The command: says it runs (the file), then waits to be signalled.
SLEEPER = "import pathlib, sys, time; pathlib.Path(sys.argv[1]).touch(); time.sleep(120)"


def signalled_runner(
    skyguard: SkyguardRunner, state_root: Path, env: dict[str, str]
) -> tuple[dict[str, Any], str]:
    """The real runner under ``state_root``, SIGTERMed once its command runs: its
    record and its stderr."""
    ready = state_root.parent / "ready"
    argv = ["run", "--grace", "10", "--job-name", "train-7", "--", PYTHON, "-c", SLEEPER]
    process = subprocess.Popen(
        [PYTHON, "-m", "devops.skypilot", *argv, str(ready)],
        env=skyguard.env({"SKYGUARD_STATE_ROOT": str(state_root), **env}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        waited = time.monotonic() + 60  # a bound against a hang only
        while not ready.exists() and process.poll() is None and time.monotonic() < waited:
            time.sleep(0.05)
        assert ready.exists(), "the command never started"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 75, stderr
    record = json.loads((state_root / KEY / "node-0" / "termination.json").read_text())
    return record, stderr


#: case -> (SkyPilot's status, the controller sees the runner's state root, the message's
#: title and reason). Hidden: a bucket only the nodes mount, the real deployment.
ENDS = {
    "cancel, shared state": ("CANCELLED", True, "train-7: cancelled", "signalled"),
    "cancel, bucket-only state": ("CANCELLED", False, "train-7: cancelled", "signalled"),
    "preemption, shared state": ("RECOVERING", True, "train-7: retrying", "signalled"),
    "preemption, bucket-only state": ("RECOVERING", False, "train-7: retrying", "node_lost"),
}


@pytest.mark.parametrize("case", sorted(ENDS))
def test_a_signalled_managed_job_is_announced_once_by_the_controller(
    case: str,
    skyguard: SkyguardRunner,
    serve: Serve,
    webhook_token: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    status, shared, title, reason = ENDS[case]
    chat = serve([discord_ok])
    url = webhook_url(chat, webhook_token)
    node_root = tmp_path / "node" / "state"
    node_root.mkdir(parents=True)
    env = {"SKYGUARD_DISCORD_WEBHOOK_URL": url, **MANAGED, **MARKER}
    record, stderr = signalled_runner(skyguard, node_root, env)
    assert record["reason"] == "signalled" and record["announced_by"] == "controller"
    assert LEFT in stderr
    assert '"announced_by": "controller"' in stderr  # the runner's termination line
    assert chat.requests == []
    # SkyPilot calls back with the status (twice here: it may call again for one end).
    monkeypatch.setenv("HOME", str(tmp_path / "controller-home"))
    seen_root = node_root if shared else tmp_path / "not-mounted-here"
    called = callback_env(seen_root, status, SKYGUARD_DISCORD_WEBHOOK_URL=url)
    for _ in range(2):
        assert event.announce(status, ControllerRecord(), dict(called), 7) == 0
    assert discord_messages(chat) == [title]
    assert f"`{reason}`" in json.dumps(chat.requests[0].json)


#: Outside a managed job wired to skyguard's callback the runner announces as ever.
RUNNER_TELLS = {
    "no marker (a recipe without the callback)": MANAGED,
    "the marker off": {**MANAGED, "SKYGUARD_EVENTS_FROM_CONTROLLER": "0"},
    "the marker, no managed job (sky launch of the recipe)": {
        "SKYPILOT_TASK_ID": "sky-2026-01-02-03-04-05-123456_train_7-0",
        **MARKER,
    },
}


@pytest.mark.parametrize("case", sorted(RUNNER_TELLS))
def test_otherwise_the_runner_announces_its_signal(
    case: str, skyguard: SkyguardRunner, serve: Serve, webhook_token: str, tmp_path: Path
) -> None:
    chat = serve([discord_ok])
    env = {"SKYGUARD_DISCORD_WEBHOOK_URL": webhook_url(chat, webhook_token), **RUNNER_TELLS[case]}
    root = tmp_path / "state"
    root.mkdir()
    if "SKYPILOT_MANAGED_JOB_ID" not in env:
        env["SKYGUARD_RUN_KEY"] = KEY  # a plain launch's id differs per launch
    record, stderr = signalled_runner(skyguard, root, env)
    assert record["announced_by"] == "runner"
    assert LEFT not in stderr
    assert discord_messages(chat) == ["train-7: cancelled"]


def test_the_marker_is_one_or_zero() -> None:
    managed = {"SKYPILOT_MANAGED_JOB_ID": "7"}
    assert left_to_controller({**managed, **MARKER}) == {TerminationReason.SIGNALLED}
    assert left_to_controller(MARKER) == frozenset()
    with pytest.raises(ConfigError, match="SKYGUARD_EVENTS_FROM_CONTROLLER='yes': use 1"):
        left_to_controller({**managed, "SKYGUARD_EVENTS_FROM_CONTROLLER": "yes"})
