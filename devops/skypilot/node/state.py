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
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devops.skypilot.common import fields
from devops.skypilot.common.files import write_atomic
from devops.skypilot.common.termination import EXIT_RETRY, Termination, TerminationReason
from devops.skypilot.common.values import ConfigError
from devops.skypilot.node.liveness import ProcessStamp

logger = logging.getLogger(__name__)

TERMINATION_FILE = "termination.json"
ATTEMPT_FILE = "attempt.json"


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON, all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", durable=True)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None if absent. Raises ValueError if corrupt."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {fields.shown(data)}")
    return data


#: What each field of ``attempt.json`` must be; host/pid/boot/start came later.
CHECKPOINT_FIELDS: Mapping[str, fields.Kind] = {
    "attempt": fields.ATTEMPT,
    "started_at": fields.TEXT,
    "elapsed": fields.SECONDS,
    "checkpointed_at": fields.TEXT,
}
CHECKPOINT_EXTRA: Mapping[str, fields.Kind] = {
    "host": fields.TEXT,
    "pid": fields.PID,
    "boot_id": fields.TEXT,
    "start_ticks": fields.COUNT,
    "command_pid": fields.PID,
    "command_start_ticks": fields.COUNT,
    "command_token": fields.TEXT,
    "cgroup": fields.TEXT,
}
#: Lost attempts filled in at most: enough for any retry budget, bounded against a
#: stray ``logs/attempt-999999.log``.
MAX_LOST = 100
_LOG_NAME = re.compile(r"attempt-([1-9][0-9]{0,5})\.log")


@dataclass(frozen=True)
class RunningAttempt:
    """Checkpoint of the attempt in progress, so a SIGKILLed runner still counts."""

    attempt: int
    started_at: str
    #: Seconds run so far, as of the last checkpoint.
    elapsed: float
    checkpointed_at: str
    #: The runner that wrote it (host, boot, pid, start time), so a second runner on
    #: the same state dir is refused while the first still runs, and only then.
    host: str = ""
    pid: int = 0
    boot_id: str = ""
    start_ticks: int = 0
    #: The command (pid, start time) and the token in its tree's environment, so the
    #: next runner can stop what is left of it (see ``node/leftovers.py``).
    command_pid: int = 0
    command_start_ticks: int = 0
    command_token: str = ""
    #: The attempt's own cgroup, where the runner could make one ("" where not).
    cgroup: str = ""

    @classmethod
    def from_json(cls, data: Any) -> RunningAttempt:
        """Build a checkpoint from JSON, every field checked; ValueError names a bad one."""
        values = fields.checked(data, CHECKPOINT_FIELDS, CHECKPOINT_EXTRA)
        values["elapsed"] = float(values["elapsed"])
        return cls(**values)

    @classmethod
    def by_this_runner(
        cls,
        attempt: int,
        started_at: str,
        elapsed: float,
        checkpointed_at: str,
        command: ProcessStamp | None = None,
        token: str = "",
        cgroup: str = "",
    ) -> RunningAttempt:
        stamp = ProcessStamp.own()
        if stamp is None:  # no /proc: never mistaken for a live runner
            return cls(attempt, started_at, elapsed, checkpointed_at, pid=os.getpid())
        return cls(
            attempt,
            started_at,
            elapsed,
            checkpointed_at,
            stamp.host,
            stamp.pid,
            stamp.boot_id,
            stamp.start_ticks,
            command.pid if command else 0,
            command.start_ticks if command else 0,
            token,
            cgroup,
        )

    def command(self) -> ProcessStamp:
        """The command it ran (start time 0, never alive, when it did not say)."""
        return ProcessStamp(self.host, self.boot_id, self.command_pid, self.command_start_ticks)

    def runner_alive(self) -> bool:
        """Whether the runner that wrote this checkpoint still runs. A checkpoint
        without a start time (an older skyguard) cannot prove it and counts as dead."""
        if self.pid == os.getpid():
            return False
        return ProcessStamp(self.host, self.boot_id, self.pid, self.start_ticks).alive()


class StateDir:
    """Reads and writes the files of one task's state directory.

    A file of the wrong shape is moved aside (``<name>.corrupt``, then ``.corrupt.2``
    ...: kept for forensics, never overwritten) and reported in one line; it never
    stops an attempt. The attempts it held are not forgotten: see
    :meth:`with_lost_attempts`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        #: Attempt numbers seen in files that were set aside.
        self._lost_evidence: set[int] = set()
        self._set_aside_any = False

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
        """Every readable recorded attempt, oldest first. A file of the wrong shape is
        set aside; what it held that still reads is kept."""
        path = self.termination_file
        data = self._read(path)
        if data is None:
            return []
        raw = data.get("history")
        if not isinstance(raw, list):
            self._set_aside(path, f"history: expected a list, got {fields.shown(raw)}", data)
            return []
        history, problems = [], []
        for index, item in enumerate(raw):
            try:
                history.append(Termination.from_json(item))
            except ValueError as error:
                problems.append(f"history[{index}]: {error}")
        try:
            Termination.from_json({k: v for k, v in data.items() if k != "history"})
        except ValueError as error:
            problems.append(str(error))
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            self._set_aside(path, problems[0] + more, data)
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

    def drop_checkpoint(self) -> None:
        """Forget the running attempt: it never started anything."""
        with contextlib.suppress(OSError):
            (self.path / ATTEMPT_FILE).unlink()

    def take_abandoned(self) -> RunningAttempt | None:
        """A checkpoint left by a runner that died before recording its end."""
        path = self.path / ATTEMPT_FILE
        data = self._read(path)
        if data is None:
            return None
        try:
            return RunningAttempt.from_json(data)
        except ValueError as error:
            self._set_aside(path, str(error), {"history": [data]})
            return None

    def with_lost_attempts(
        self, history: list[Termination], node_rank: int, task_id: str
    ) -> list[Termination]:
        """``history`` with a ``record_lost`` end for every attempt that left a trace
        (a log, a number in a set-aside file) but no readable record, once a file was
        set aside. Without them a corrupted file would reset the attempt count, and a
        file corrupted on every attempt would let a crash loop retry forever."""
        if not self._set_aside_any:
            return history
        known = {item.attempt for item in history}
        highest = max([*self._lost_evidence, *self._logged_attempts(), *known], default=0)
        lost = [n for n in range(1, highest + 1) if n not in known][-MAX_LOST:]
        if lost:
            logger.warning(
                "skyguard: %d earlier attempt(s) (%s) left no readable record; each counts "
                "as a retryable end that spent the retry budget (record_lost)",
                len(lost),
                _ranges(lost),
            )
        placeholders = [lost_termination(n, node_rank, task_id) for n in lost]
        return sorted([*history, *placeholders], key=lambda item: item.attempt)

    def _logged_attempts(self) -> list[int]:
        try:
            names = os.listdir(self.path / "logs")
        except OSError:
            return []
        return [int(m.group(1)) for name in names if (m := _LOG_NAME.fullmatch(name))]

    def _read(self, path: Path) -> dict[str, Any] | None:
        """The JSON object in ``path``; None if absent or set aside as unreadable."""
        try:
            return read_json(path)
        except FileNotFoundError:
            return None
        except ValueError as error:  # not JSON, not UTF-8, not an object
            self._set_aside(path, " ".join(str(error).split()) or "unreadable", {})
            return None
        except OSError as error:
            raise ConfigError(f"cannot read {path}: {error.strerror or error}") from None

    def _set_aside(self, path: Path, why: str, data: Mapping[str, Any]) -> None:
        """Move ``path`` out of the way under a name never used before, and say so."""
        self._set_aside_any = True
        self._lost_evidence.update(_attempt_numbers(data))
        aside = path.with_name(f"{path.name}.corrupt")
        number = 1
        while aside.exists():
            number += 1
            aside = path.with_name(f"{path.name}.corrupt.{number}")
        try:
            os.replace(path, aside)
            where = f"moved to {aside.name} for forensics"
        except OSError as error:
            where = f"could not move it aside ({error.strerror}); the next record replaces it"
        logger.warning("skyguard: %s is corrupt (%s); %s", path, why, where)


def _attempt_numbers(data: Mapping[str, Any]) -> set[int]:
    """The attempt numbers a set-aside file still shows, wherever they still read."""
    history = data.get("history")
    items = [data, *(history if isinstance(history, list) else [])]
    return {
        item["attempt"]
        for item in items
        if isinstance(item, Mapping)
        and fields.ATTEMPT.test(item.get("attempt"))
        and item["attempt"] < 10**6
    }


def _ranges(numbers: list[int]) -> str:
    return f"{numbers[0]}-{numbers[-1]}" if len(numbers) > 1 else str(numbers[0])


def lost_termination(attempt: int, node_rank: int, task_id: str) -> Termination:
    """The record standing in for an attempt whose own record was lost."""
    return Termination(
        reason=TerminationReason.RECORD_LOST,
        exit_code=EXIT_RETRY,
        child_exit_code=None,
        signal=None,
        detail="no readable record of this attempt (its state file was set aside); "
        "counted as a retryable end that spent the retry budget",
        monitor="",
        attempt=attempt,
        started_at="",
        ended_at="",
        duration=0.0,
        node_rank=node_rank,
        task_id=task_id,
    )


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
            "runner died without recording an end (SIGKILL or machine lost)"
            f"{'' if running.command_pid else ' before its command started'}; "
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
