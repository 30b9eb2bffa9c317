"""The runner's state directory: attempt history and the running attempt's checkpoint.

The state dir must survive a SkyPilot recovery, which usually lands on another
machine, so it typically lives on a bucket mounted through ``file_mounts``
(FUSE). Hence: small whole-file replacements (write a temp file, then rename),
no file locks, no reliance on mtime. A runner killed mid-write loses nothing:
the old file stays until the rename.

Files:
    termination.json   latest attempt's record + ``history`` of every attempt
    attempt.json       the running attempt, checkpointed while it runs; a leftover
                       one at start means the last runner died without a record
    logs/attempt-N.log the command's output for attempt N
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from devops.skypilot.common.termination import EXIT_RETRY, Termination, TerminationReason

logger = logging.getLogger(__name__)

TERMINATION_FILE = "termination.json"
ATTEMPT_FILE = "attempt.json"


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON, all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None if absent. Raises ValueError if corrupt."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


@dataclass(frozen=True)
class RunningAttempt:
    """Checkpoint of the attempt in progress, so a SIGKILLed runner still counts."""

    attempt: int
    started_at: str
    #: Seconds run so far, as of the last checkpoint.
    elapsed: float
    checkpointed_at: str
    #: The runner that wrote it, so a second runner on the same state dir is refused.
    host: str = ""
    pid: int = 0

    def runner_alive(self) -> bool:
        """Whether the runner that wrote this checkpoint still runs (on this host)."""
        if self.host != socket.gethostname() or self.pid in (0, os.getpid()):
            return False
        try:
            cmdline = " ".join(psutil.Process(self.pid).cmdline())
        except psutil.Error:
            return False
        return "skyguard" in cmdline or "devops.skypilot" in cmdline


class StateDir:
    """Reads and writes the files of one task's state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def termination_file(self) -> Path:
        return self.path / TERMINATION_FILE

    def log_file(self, attempt: int) -> Path:
        return self.path / "logs" / f"attempt-{attempt}.log"

    def ensure_writable(self) -> None:
        """Create the directory and prove a file can be written there (raises OSError)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path / ".write-test", {"ok": True})
        (self.path / ".write-test").unlink()

    def load_history(self) -> list[Termination]:
        """Every recorded attempt, oldest first. A corrupt file is set aside, not fatal."""
        try:
            data = read_json(self.termination_file)
            if data is None:
                return []
            history = [Termination.from_json(item) for item in data.get("history", [])]
        except (ValueError, KeyError, TypeError) as error:
            aside = self._set_aside(self.termination_file)
            logger.warning(
                "skyguard: %s is corrupt (%s); moved to %s, starting a fresh history",
                self.termination_file,
                error,
                aside.name,
            )
            return []
        return history

    def record(self, termination: Termination, history: list[Termination]) -> None:
        """Write the ended attempt with the whole history, and drop the checkpoint."""
        data = termination.to_json()
        data["history"] = [item.to_json() for item in [*history, termination]]
        write_json_atomic(self.termination_file, data)
        with contextlib.suppress(FileNotFoundError):
            (self.path / ATTEMPT_FILE).unlink()

    def checkpoint(self, running: RunningAttempt) -> None:
        write_json_atomic(self.path / ATTEMPT_FILE, running.__dict__)

    def take_abandoned(self) -> RunningAttempt | None:
        """A checkpoint left by a runner that died before recording its end."""
        path = self.path / ATTEMPT_FILE
        try:
            data = read_json(path)
            if data is None:
                return None
            return RunningAttempt(
                attempt=int(data["attempt"]),
                started_at=str(data["started_at"]),
                elapsed=float(data["elapsed"]),
                checkpointed_at=str(data["checkpointed_at"]),
                host=str(data.get("host", "")),
                pid=int(data.get("pid", 0)),
            )
        except (ValueError, KeyError, TypeError) as error:
            aside = self._set_aside(path)
            logger.warning("skyguard: %s is corrupt (%s); moved to %s", path, error, aside.name)
            return None

    def _set_aside(self, path: Path) -> Path:
        aside = path.with_name(f"{path.name}.corrupt")
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        return aside


def abandoned_termination(running: RunningAttempt, node_rank: int, task_id: str) -> Termination:
    """The record of an attempt whose runner died without writing one.

    A runner only dies that way by SIGKILL or the machine going away: a
    preemption without grace, most often. It counts like a signalled end.
    """
    return Termination(
        reason=TerminationReason.SIGNALLED,
        exit_code=EXIT_RETRY,
        child_exit_code=None,
        signal=None,
        detail=(
            "runner died without recording an end (SIGKILL or machine lost); "
            f"runtime counted up to its last checkpoint at {running.checkpointed_at}"
        ),
        monitor="",
        attempt=running.attempt,
        started_at=running.started_at,
        ended_at=running.checkpointed_at,
        duration=running.elapsed,
        node_rank=node_rank,
        task_id=task_id,
    )
