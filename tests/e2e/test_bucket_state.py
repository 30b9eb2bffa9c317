"""Runner state on a real rclone FUSE mount, torn down after every attempt as a recovery does.

Each attempt is one "machine": a fresh home, the bucket mounted with exactly the
command SkyPilot 0.14.1 runs for ``MOUNT_CACHED`` (``mounting_utils.get_mount_cached_cmd``),
and ``recipes/job.yaml``'s ``run:`` as ``skyguard launch`` renders it, wrapped and run by
SkyPilot's own code (``TaskCodeGen.build_task_bash_script`` appends the upload flush,
``log_lib.run_bash_command_with_log`` runs ``/bin/bash -i FILE``). When the script
ends, the machine goes as it does in a recovery: rclone is SIGKILLed and its cache
deleted. The "bucket" is a local directory behind an rclone ``local`` remote (the
VFS cache and its write-back are rclone's, whatever the backend). Why not a local S3
server through ``sky jobs launch``: see docs/launch.md ("End-to-end tier").
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from devops.skypilot.common.termination import EXIT_CRASH_LOOP, EXIT_RETRY

from .conftest import REPO, Cluster

pytestmark = pytest.mark.e2e

REMOTE = "skyguard-e2e-bucket"
#: SkyPilot's own MOUNT_CACHED mount command for a local rclone remote.
_MOUNT_COMMAND = """
import sys
from sky.data import mounting_utils
print(mounting_utils.get_mount_cached_cmd(
    f"[{sys.argv[1]}]\\ntype = local\\n", sys.argv[1], sys.argv[2], sys.argv[3]))
"""
#: Runs a task script the way SkyPilot's executors do; prints the exit code.
_RUN_TASK = """
import json, sys
from sky.backends.task_codegen import TaskCodeGen
from sky.skylet import log_lib
spec = json.load(open(sys.argv[1]))
script = TaskCodeGen.build_task_bash_script(spec["run"])
print(log_lib.run_bash_command_with_log(script, spec["log"], env_vars=spec["envs"]))
"""
#: Bounds against a hang only: an attempt is ~5 s plus SkyPilot's flush (11-21 s).
ATTEMPT_TIMEOUT = 180


class Machine:
    """One attempt's node: its own home (rclone config, cache, logs) and the mount."""

    def __init__(self, cluster: Cluster, root: Path, number: int, bucket: Path) -> None:
        self.cluster = cluster
        self.home = root / f"machine-{number}"
        self.mount = root / "skyguard-state"
        self.bucket = bucket
        self.log = root / f"attempt-{number}.log"
        self.home.mkdir()
        self.mount.mkdir(exist_ok=True)
        # SkyPilot's task script starts with `cd ~/sky_workdir`.
        (self.home / "sky_workdir").symlink_to(REPO)

    def env(self) -> dict[str, str]:
        env = self.cluster.env()
        env.update(HOME=str(self.home), PATH=f"/usr/local/bin:{env['PATH']}")
        return env

    def mount_bucket(self) -> None:
        command = self.cluster.run(
            [
                str(self.cluster.python),
                "-c",
                _MOUNT_COMMAND,
                REMOTE,
                str(self.bucket),
                str(self.mount),
            ]
        ).strip()
        result = subprocess.run(
            ["bash", "-c", command],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"rclone mount failed: {result.stderr[-1000:]}"
        assert self.fstype() == "fuse.rclone"

    def fstype(self) -> str:
        for part in psutil.disk_partitions(all=True):
            if part.mountpoint == str(self.mount):
                return part.fstype
        return ""

    def run_task(self, run: str, envs: dict[str, str]) -> tuple[int, str]:
        spec = self.home / "task.json"
        spec.write_text(json.dumps({"run": run, "envs": envs, "log": str(self.log)}))
        result = subprocess.run(
            [str(self.cluster.python), "-c", _RUN_TASK, str(spec)],
            cwd=self.home,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=ATTEMPT_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, f"task driver failed: {result.stderr[-2000:]}"
        return int(result.stdout.split()[-1]), self.log.read_text()

    def tear_down(self) -> None:
        """What a recovery does to the node: rclone dies at once, its cache goes with the disk."""
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info["cmdline"] or []
            if "mount" in cmdline and str(self.mount) in cmdline:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
        subprocess.run(
            ["fusermount3", "-u", "-z", str(self.mount)],
            capture_output=True,
            check=False,
            timeout=30,
        )
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture
def workspace(cluster: Cluster) -> Iterator[Path]:
    root = cluster.state_root.parent / f"bucket-{cluster.session}"
    (root / "bucket").mkdir(parents=True)
    try:
        yield root
    finally:
        mount = root / "skyguard-state"
        for process in psutil.process_iter(["cmdline"]):
            if str(mount) in (process.info["cmdline"] or []):
                process.kill()
        subprocess.run(
            ["fusermount3", "-u", "-z", str(mount)], capture_output=True, check=False, timeout=30
        )
        shutil.rmtree(root, ignore_errors=True)


def rendered_task(cluster: Cluster, name: str, *argv: str) -> tuple[str, dict[str, str]]:
    """``run:`` and envs of recipes/job.yaml as `skyguard launch` renders them."""
    out = cluster.launch("--dump-config", "json", "--name", name, "--skip-git-check", *argv)
    config: dict[str, Any] = json.loads(out)
    return str(config["run"]), {k: str(v) for k, v in config["envs"].items()}


def attempt(
    cluster: Cluster, root: Path, number: int, run: str, envs: dict[str, str]
) -> tuple[int, str, float]:
    """One attempt on a fresh machine; (exit code, output, seconds); the machine is gone after."""
    machine = Machine(cluster, root, number, root / "bucket")
    started = time.monotonic()
    try:
        machine.mount_bucket()
        code, output = machine.run_task(run, {**envs, "SKYGUARD_STATE_ROOT": str(machine.mount)})
    finally:
        machine.tear_down()
    return code, output, time.monotonic() - started


def skypilot_envs(name: str) -> dict[str, str]:
    """What SkyPilot sets for a managed job's task (one node, managed job 7)."""
    return {
        "SKYPILOT_TASK_ID": f"sky-managed-2026-11-23-00-14-53-926267_{name}_7-0",
        "SKYPILOT_MANAGED_JOB_ID": "7",
        "SKYPILOT_NODE_RANK": "0",
        "SKYPILOT_NUM_NODES": "1",
        "SKYPILOT_NODE_IPS": "127.0.0.1",
    }


def test_state_on_a_cached_bucket_survives_teardown_and_the_guard_stops_a_hang_loop(
    cluster: Cluster, workspace: Path
) -> None:
    """Attempt 2 on a fresh machine sees attempt 1; a job that hangs every time ends 125."""
    name = f"e2e-bucket-{cluster.session}"
    run, envs = rendered_task(
        cluster,
        name,
        "--state-bucket",
        REMOTE,
        "--heartbeat-timeout",
        "2s",
        "--grace",
        "2s",
        "--env",
        "SKYGUARD_CRASH_LOOP_COUNT=2",
        "--",
        "python",
        "examples/train.py",
        "--step-time",
        "0.2",
        "--hang-after",
        "1",
    )
    envs.update(skypilot_envs(name))
    key = envs["SKYGUARD_RUN_KEY"]
    record = workspace / "bucket" / key / "node-0" / "termination.json"
    codes = []
    for number in (1, 2, 3):
        code, output, seconds = attempt(cluster, workspace, number, run, envs)
        print(f"e2e timing: bucket attempt {number} (mount, run, flush, teardown) = {seconds:.1f}s")
        codes.append(code)
        assert "skypilot: cached mount upload complete" in output, output[-2000:]
        assert "no SkyPilot run: script waits to flush" not in output
        # After the teardown only the bucket is left; it holds every attempt so far.
        history = json.loads(record.read_text())["history"]
        assert [item["attempt"] for item in history] == list(range(1, number + 1))
        if code != EXIT_RETRY:  # SkyPilot restarts only on 75
            break
    assert codes == [EXIT_RETRY, EXIT_CRASH_LOOP]
    assert [(item["reason"], item["exit_code"]) for item in history] == [
        ("heartbeat_timeout", EXIT_RETRY),
        ("crash_loop", EXIT_CRASH_LOOP),
    ]
    assert (workspace / "bucket" / key / "node-0" / "logs" / "attempt-2.log").is_file()
