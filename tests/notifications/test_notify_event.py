"""``skyguard notify-event``, SkyPilot's event_callback: real processes, a loopback Discord.

The controller's record (SkyPilot's jobs database) is stood in for by a
:class:`ControllerRecord` in-process; the subprocess test runs the real command,
which reads a real (empty) SkyPilot jobs database in its own home.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from devops.skypilot.common.lifecycle import Phase
from devops.skypilot.common.termination import TerminationReason
from devops.skypilot.controller import event
from devops.skypilot.controller.skypilot_record import ControllerRecord
from notifications.channels.discord import DiscordNotifier, DiscordSettings
from notifications.http import HttpTimeouts
from notifications.orchestrator import Orchestrator
from notifications.secrets import Secret
from tests.notifications.notify_fakes import LoopbackServer, Reply, Request, discord_ok, webhook_url

Serve = Callable[..., LoopbackServer]
ROOT = Path(__file__).resolve().parents[2]
TASK_ID = "sky-managed-2026-01-02-03-04-05-123456_train_7-0"
#: The run key the runner derives from TASK_ID: the state dir is <root>/<key>/node-0.
KEY = "train_7-0"


def callback_env(state_root: Path, status: str, **more: str) -> dict[str, str]:
    """What SkyPilot 0.14.1 passes (sky/jobs/utils.py event_callback_func), less secrets."""
    return {
        "JOB_STATUS": status,
        "JOB_ID": "7",
        "TASK_ID": "0",
        "SKYPILOT_TASK_ID": TASK_ID,
        "CLUSTER_NAME": "train-7",
        "TASK_NAME": "train",
        "SKYGUARD_STATE_ROOT": str(state_root),
        **more,
    }


def discord_messages(server: LoopbackServer) -> list[str]:
    # Titles are escaped for Discord markdown ("train\\-7").
    return [r.json["embeds"][0]["title"].replace("\\", "") for r in server.requests]


def run_notify_event(env: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    """The real command, as the recipe's callback runs it, in a home of its own."""
    return subprocess.run(
        [sys.executable, "-m", "devops.skypilot", "notify-event"],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def discord(serve: Serve, webhook_token: str) -> tuple[LoopbackServer, str]:
    """A loopback Discord that stores every message, and its webhook URL."""
    server = serve([discord_ok])
    return server, webhook_url(server, webhook_token)


@pytest.fixture
def head_state(tmp_path: Path) -> Path:
    """The head node's state dir under the state root ``tmp_path``."""
    state_dir = tmp_path / KEY / "node-0"
    state_dir.mkdir(parents=True)
    return state_dir


def announce(
    status: str,
    state_root: Path,
    record: ControllerRecord | None = None,
    **env: str,
) -> int:
    found = record or ControllerRecord()
    return event.announce(status, found, callback_env(state_root, status, **env), 7)


def test_a_cancel_is_announced_once_by_the_real_command(
    discord: tuple[LoopbackServer, str], webhook_token: str, tmp_path: Path
) -> None:
    server, url = discord
    (tmp_path / "state").mkdir()
    env = {"SKYGUARD_DISCORD_WEBHOOK_URL": url, **callback_env(tmp_path / "state", "CANCELLED")}
    result = run_notify_event(env, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CANCELLED -> cancelled/signalled: discord: sent" in result.stdout
    assert webhook_token not in result.stdout + result.stderr
    # SkyPilot may call again for the same end: the second call finds it sent.
    assert announce("CANCELLED", tmp_path / "state", SKYGUARD_DISCORD_WEBHOOK_URL=url) == 0
    assert discord_messages(server) == ["train-7: cancelled"]
    sent = json.loads((tmp_path / "state" / KEY / "node-0" / "notifications.json").read_text())
    assert [(e["task_id"], e["phase"], e["reason"]) for e in sent["sent"]] == [
        (KEY, "cancelled", "signalled")
    ]


def runner_for(url: str) -> Orchestrator:
    """The head node's runner, sending to Discord."""
    return Orchestrator([DiscordNotifier(DiscordSettings(Secret(url), timeouts=HttpTimeouts()))])


def test_the_runners_own_message_is_not_repeated(
    discord: tuple[LoopbackServer, str], head_state: Path, tmp_path: Path
) -> None:
    server, url = discord
    # The head node's runner announced the cancel (it got SIGTERM with grace).
    told = runner_for(url).notify(
        event_for_runner(Phase.CANCELLED, TerminationReason.SIGNALLED), state_dir=head_state
    )
    assert [d.ok for d in told] == [True]
    assert announce("CANCELLED", tmp_path, SKYGUARD_DISCORD_WEBHOOK_URL=url) == 0
    assert len(server.requests) == 1


def event_for_runner(phase: Phase, reason: TerminationReason) -> event.Event:
    return event.Event(job_name="train-7", task_id=KEY, phase=phase, reason=reason)


def test_controller_and_runner_at_the_same_moment_send_one_message(
    serve: Serve, webhook_token: str, head_state: Path, tmp_path: Path
) -> None:
    """The runner holds the claim while its message is in flight; the controller waits
    for it and then finds the message sent (without the lock both would post)."""
    arrived = threading.Event()

    def slow(request: Request) -> Reply:
        arrived.set()
        return dataclasses.replace(discord_ok(request), delay=0.5)

    server = serve([slow])
    url = webhook_url(server, webhook_token)
    sending = threading.Thread(
        target=runner_for(url).notify,
        args=(event_for_runner(Phase.CANCELLED, TerminationReason.SIGNALLED),),
        kwargs={"state_dir": head_state},
    )
    sending.start()
    try:
        assert arrived.wait(30)
        assert announce("CANCELLED", tmp_path, SKYGUARD_DISCORD_WEBHOOK_URL=url) == 0
    finally:
        sending.join(30)
    assert len(server.requests) == 1


def test_secrets_come_from_the_controllers_record_and_stay_out_of_every_text(
    discord: tuple[LoopbackServer, str],
    webhook_token: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, url = discord
    record = ControllerRecord(
        status="FAILED_SETUP",
        failure_reason=f"setup exited 1: curl {url} said 500",
        secrets={"SKYGUARD_DISCORD_WEBHOOK_URL": url},
    )
    assert announce("FAILED", tmp_path, record) == 0
    (request,) = server.requests
    assert discord_messages(server) == ["train-7: failed"]
    assert "setup_failed" in json.dumps(request.json)
    assert webhook_token not in request.body.decode()
    out = capsys.readouterr()
    assert "FAILED_SETUP -> failed/setup_failed: discord: sent" in out.out
    assert webhook_token not in out.out + out.err


def test_an_end_the_runner_reports_is_left_to_it_when_its_state_is_hidden(
    discord: tuple[LoopbackServer, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, url = discord
    hidden = tmp_path / "bucket-only-the-nodes-mount"
    home = tmp_path / "home"
    os.environ["HOME"], old_home = str(home), os.environ.get("HOME", "")
    try:
        assert announce("SUCCEEDED", hidden, SKYGUARD_DISCORD_WEBHOOK_URL=url) == 0
        # A cancel no node may have announced is sent anyway, once, from the
        # controller's own sent-log.
        assert announce("CANCELLED", hidden, SKYGUARD_DISCORD_WEBHOOK_URL=url) == 0
        assert announce("CANCELLED", hidden, SKYGUARD_DISCORD_WEBHOOK_URL=url) == 0
    finally:
        os.environ["HOME"] = old_home
    assert discord_messages(server) == ["train-7: cancelled"]
    assert "the runner reports this end itself" in capsys.readouterr().out
    assert (home / ".skyguard" / "controller" / KEY / "notifications.json").is_file()


def test_a_node_lost_under_its_runner_is_announced(
    discord: tuple[LoopbackServer, str], head_state: Path, tmp_path: Path
) -> None:
    server, url = discord
    # Attempt 2 is running (its checkpoint is there) when the node is preempted.
    (head_state / "attempt.json").write_text(json.dumps({"attempt": 2}))
    assert announce("RECOVERING", tmp_path, SKYGUARD_DISCORD_WEBHOOK_URL=url) == 0
    assert discord_messages(server) == ["train-7: retrying"]
    assert "node_lost" in server.requests[0].body.decode()


#: SkyPilot's call -> (exit code, the one line on stdout or stderr).
CALLS = {
    "no news: STARTING": ({"JOB_STATUS": "STARTING"}, 0, "STARTING: nothing to tell"),
    "no news: STARTED": ({"JOB_STATUS": "STARTED"}, 0, "STARTED: nothing to tell"),
    "no news: CANCELLING": ({"JOB_STATUS": "CANCELLING"}, 0, "CANCELLING: nothing to tell"),
    "a new status": (
        {"JOB_STATUS": "NEW_IN_SKYPILOT_9"},
        0,
        "NEW_IN_SKYPILOT_9: a status skyguard does not know; nothing sent",
    ),
    "no status": (
        {},
        2,
        "JOB_STATUS is not set: this is SkyPilot's event_callback (recipes/job.yaml), "
        "run by the jobs controller",
    ),
    "a bad job id": ({"JOB_STATUS": "CANCELLED", "JOB_ID": "x"}, 2, "JOB_ID='x' is not a number"),
}


@pytest.mark.parametrize("case", sorted(CALLS))
def test_a_call_with_nothing_to_send_is_one_line(case: str, tmp_path: Path) -> None:
    env, code, line = CALLS[case]
    result = run_notify_event(env, tmp_path)
    assert result.returncode == code
    said = result.stdout if code == 0 else result.stderr
    assert said.splitlines() == [f"skyguard notify-event: {line}"]
    assert "Traceback" not in result.stderr


# --- the recipe's event_callback: which Python it finds on the controller -------------------


def run_recipe_callback(
    tmp_path: Path, env: dict[str, str], via_shell: bool
) -> subprocess.CompletedProcess[str]:
    """recipes/job.yaml's event_callback as SkyPilot runs it (``bash -i FILE``, its parent
    the controller's Python); ``via_shell`` puts a plain shell in between instead."""
    import yaml

    script = tmp_path / "callback.sh"
    script.write_text(yaml.safe_load((ROOT / "recipes" / "job.yaml").read_text())["event_callback"])
    # SkyPilot's controller runs as `<absolute venv path>/python -u -m sky.jobs.controller`
    # and starts the callback with Popen("/bin/bash -i FILE", shell=True).
    parent = [
        sys.executable,
        "-c",
        f"import subprocess; subprocess.run('/bin/bash -i {script}', shell=True)",
    ]
    command = ["bash", "-c", f"bash {script}; true"] if via_shell else parent
    return subprocess.run(
        command,
        cwd=tmp_path,
        # No skyguard on PATH, no SkyPilot runtime in this home.
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "JOB_STATUS": "STARTED", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


#: case -> (env, a plain shell between the controller's Python and the callback, stdout).
RECIPE_CALLS = {
    "the controller's own Python": ({}, False, "skyguard notify-event: STARTED: nothing to tell"),
    "SKYGUARD_CONTROLLER_PYTHON": (
        {"SKYGUARD_CONTROLLER_PYTHON": sys.executable},
        True,
        "skyguard notify-event: STARTED: nothing to tell",
    ),
    "no skyguard, no SkyPilot": (
        {},
        True,
        "skyguard notify-event: skyguard is not installed on the jobs controller: nothing "
        "sent for STARTED (set SKYGUARD_CONTROLLER_PYTHON; docs/notifications.md)",
    ),
}


@pytest.mark.parametrize("case", sorted(RECIPE_CALLS))
def test_the_recipes_callback_finds_skyguard_or_says_so(case: str, tmp_path: Path) -> None:
    env, via_shell, line = RECIPE_CALLS[case]
    result = run_recipe_callback(tmp_path, env, via_shell)
    assert result.returncode == 0
    assert result.stdout.splitlines() == [line], result.stderr
    # bash -i under a Python without a terminal warns about job control; nothing else.
    assert "Traceback" not in result.stderr and (result.stderr == "" or not via_shell)
