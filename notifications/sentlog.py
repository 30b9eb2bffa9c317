"""What was already said for a task: ``<state-dir>/notifications.json``.

The state dir lives on storage that survives a managed-job recovery, so a restarted
runner (same task id) neither announces the same thing twice nor posts again to a
webhook that was deleted earlier in the task. Two senders may share it: the head
node's runner and ``skyguard notify-event`` on SkyPilot's jobs controller (where it
can see the state dir) both announce a cancel; :meth:`SentLog.claim` makes the
second one wait for the first and then find the message already sent.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devops.skypilot.common.files import write_atomic
from devops.skypilot.common.lifecycle import Phase
from devops.skypilot.common.termination import TerminationReason

logger = logging.getLogger(__name__)

STATE_FILE = "notifications.json"
LOCK_FILE = ".notifications.lock"
#: How often a sender waiting for another one's claim tries again.
_CLAIM_POLL = 0.05


@dataclass(frozen=True)
class DedupKey:
    task_id: str
    phase: Phase
    reason: TerminationReason | None

    def as_json(self) -> dict[str, str]:
        return {
            "task_id": self.task_id,
            "phase": self.phase.value,
            "reason": self.reason.value if self.reason else "",
        }


class SentLog:
    """``{"sent": [...], "gone": [...]}``: what each channel carried, and which
    channels' endpoints are gone, per task. Written atomically."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE

    @contextlib.contextmanager
    def claim(self, deadline_at: float) -> Iterator[bool]:
        """Hold the task's send lock from the dedup check to the record, waiting for
        another sender at most until ``deadline_at`` (monotonic). Yields whether the
        lock is held: on a filesystem without locks, or past the deadline, the send
        goes ahead unlocked (a rare second message beats a lost one)."""
        handle = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = (self.path.parent / LOCK_FILE).open("a")
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() + _CLAIM_POLL >= deadline_at:
                        raise
                    time.sleep(_CLAIM_POLL)
        except OSError as exc:
            logger.warning("sending without the lock on %s: %s", self.path.parent, exc)
            if handle is not None:
                handle.close()
            handle = None
        try:
            yield handle is not None
        finally:
            if handle is not None:
                handle.close()  # closing the file releases the lock

    def _load(self) -> dict[str, list[dict[str, Any]]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data["sent"], list):
                raise TypeError("'sent' is not a list")
        except FileNotFoundError:
            return {"sent": [], "gone": []}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable %s: %s", self.path, exc)
            return {"sent": [], "gone": []}
        loaded: dict[str, list[dict[str, Any]]] = {}
        for name in ("sent", "gone"):
            # Files written before "gone" existed have only "sent".
            entries = data.get(name)
            entries = entries if isinstance(entries, list) else []
            loaded[name] = [entry for entry in entries if isinstance(entry, dict)]
        return loaded

    def sent(self, key: DedupKey) -> frozenset[str]:
        wanted = key.as_json()
        return frozenset(
            str(entry.get("channel"))
            for entry in self._load()["sent"]
            if all(entry.get(k) == v for k, v in wanted.items())
        )

    def gone(self, task_id: str) -> dict[str, str]:
        """channel -> why its endpoint is not used again for this task."""
        return {
            str(entry.get("channel")): str(entry.get("detail", ""))
            for entry in self._load()["gone"]
            if entry.get("task_id") == task_id
        }

    def record(self, key: DedupKey, channels: Iterable[str]) -> None:
        data = self._load()
        data["sent"].extend({**key.as_json(), "channel": c} for c in sorted(channels))
        self._write(data)

    def record_gone(self, task_id: str, gone: Mapping[str, str]) -> None:
        data = self._load()
        data["gone"].extend(
            {"task_id": task_id, "channel": channel, "detail": detail}
            for channel, detail in sorted(gone.items())
        )
        self._write(data)

    def _write(self, data: Mapping[str, list[dict[str, Any]]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps({"version": 1, **data}, indent=1) + "\n")
