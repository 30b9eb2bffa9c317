"""The real runner with the notification observer plugged in: notifications never hurt the job.

The runner is the real ``skyguard run`` in its own process; the CLI builds the
observer from the config file's ``[notifications]`` table and the environment.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import PYTHON, REPO, SkyguardRunner
from tests.notifications.notify_fakes import (
    LoopbackServer,
    Reply,
    discord_ok,
    github_validator,
    webhook_url,
)

Serve = Callable[..., LoopbackServer]
SHA = "0123456789abcdef0123456789abcdef01234567"


def start(
    skyguard: SkyguardRunner, state: Path, env: dict[str, str], *command: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            PYTHON,
            "-m",
            "devops.skypilot",
            "run",
            "--state-dir",
            str(state),
            "--grace",
            "10",
            "--job-name",
            "train-7b",
            "--",
            *command,
        ],
        env=skyguard.env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, stderr


def test_failing_endpoints_leave_the_exit_code_alone(
    skyguard: SkyguardRunner, serve: Serve, webhook_token: str, github_token: str, tmp_path: Path
) -> None:
    broken = serve([Reply(500, {"message": "down"})])
    env = {
        "SKYGUARD_DISCORD_WEBHOOK_URL": webhook_url(broken, webhook_token),
        "GITHUB_TOKEN": github_token,
        "SKYGUARD_GITHUB_REPO": "octo/trainer",
        "SKYGUARD_GITHUB_API_URL": broken.url,
        "SKYGUARD_GIT_COMMIT": SHA,
        "SKYGUARD_NOTIFY_DEADLINE": "3",
    }
    process = start(skyguard, tmp_path / "state", env, PYTHON, "-c", "import sys; sys.exit(3)")
    code, stderr = finish(process)
    assert code == 3, stderr
    assert "discord: failed: HTTP 500: down" in stderr
    assert "discord: sent" not in stderr
    assert webhook_token not in stderr and github_token not in stderr


def test_a_cancelled_runner_announces_it_within_the_grace_period(
    skyguard: SkyguardRunner, serve: Serve, webhook_token: str, github_token: str, tmp_path: Path
) -> None:
    chat = serve([discord_ok])
    status = serve([Reply(201, {"id": 1})], github_validator(github_token))
    env = {
        "SKYGUARD_DISCORD_WEBHOOK_URL": webhook_url(chat, webhook_token),
        "GITHUB_TOKEN": github_token,
        "SKYGUARD_GITHUB_REPO": "octo/trainer",
        "SKYGUARD_GITHUB_API_URL": status.url,
        "SKYGUARD_GIT_COMMIT": SHA,
    }
    process = start(skyguard, tmp_path / "state", env, PYTHON, "-c", "import time; time.sleep(120)")
    try:
        waited = time.monotonic() + 30
        while not status.requests and time.monotonic() < waited and process.poll() is None:
            time.sleep(0.05)
        assert status.requests and status.requests[0].json["state"] == "pending"
        process.send_signal(signal.SIGTERM)
    finally:
        code, stderr = finish(process)
    assert code == 75, stderr
    assert [r.json["state"] for r in status.requests] == ["pending", "error"]
    (message,) = (r.json for r in chat.requests)
    assert "cancelled" in message["embeds"][0]["title"]
    fields = {f["name"]: f["value"] for f in message["embeds"][0]["fields"]}
    assert fields["Reason"] == "`signalled`"
