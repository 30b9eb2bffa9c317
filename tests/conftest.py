"""Shared fixtures: run the real runner as a subprocess and prove nothing leaks.

Every process a test starts inherits ``SKYGUARD_TEST_TAG``; after the test, any
live process carrying the tag is a leak: it is killed and the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest

if TYPE_CHECKING:
    from tests.distributed.runners import RunnerCluster

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TRAIN = str(REPO / "examples" / "train.py")
TAG_VAR = "SKYGUARD_TEST_TAG"


def tagged_processes(tag: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(TAG_VAR) == tag and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def command_line(process: psutil.Process) -> str:
    """What a process runs, for a message or a match (it may be gone already: "?")."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return "?"


@pytest.fixture
def leak_tag() -> Iterator[str]:
    tag = uuid.uuid4().hex
    yield tag
    leaked = tagged_processes(tag)
    described = [(process.pid, command_line(process)[:200]) for process in leaked]
    for process in leaked:
        with contextlib.suppress(psutil.Error):
            process.kill()
    assert not leaked, f"processes left behind: {described}"


@dataclass
class RunResult:
    returncode: int
    stdout: str
    stderr: str
    state_dir: Path

    @property
    def record(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state_dir / "termination.json").read_text())
        return data


@dataclass
class SkyguardRunner:
    """Starts ``python -m devops.skypilot run`` for real, with a tagged environment."""

    tmp_path: Path
    tag: str

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYGUARD_", "SKYPILOT_"))}
        env.update({TAG_VAR: self.tag, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
        env.update(extra or {})
        return env

    def argv(self, args: Sequence[str]) -> list[str]:
        return [PYTHON, "-m", "devops.skypilot", "run", *args]

    def start(
        self, args: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(args),
            env=self.env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )

    def run(
        self,
        command: Sequence[str],
        *options: str,
        state_dir: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> RunResult:
        state_dir = state_dir or self.tmp_path / "state"
        args = ["--state-dir", str(state_dir), *options, "--", *command]
        process = self.start(args, env)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        return RunResult(process.returncode, stdout, stderr, state_dir)


@pytest.fixture
def skyguard(tmp_path: Path, leak_tag: str) -> SkyguardRunner:
    return SkyguardRunner(tmp_path, leak_tag)


@pytest.fixture
def runners(tmp_path: Path, leak_tag: str) -> Iterator[RunnerCluster]:
    """Real runners on loopback as the nodes of one job, every one killed after the test."""
    # Imported here: tests.distributed.runners imports this module.
    from tests.distributed.runners import RunnerCluster

    cluster = RunnerCluster(tmp_path, leak_tag)
    try:
        yield cluster
    finally:
        cluster.kill_all()
