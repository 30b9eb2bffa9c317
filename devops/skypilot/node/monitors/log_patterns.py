"""Fatal lines in the command's output, classified by a table of patterns.

The table is data: defaults below, extended or replaced from the config file::

    [log_patterns]
    defaults = true            # keep the built-in table (after your own entries)
    [[log_patterns.match]]
    pattern = "RuntimeError: DataLoader worker .* is killed"
    reason = "job_failed"

The first matching entry wins; its line goes in the verdict's detail.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from devops.skypilot.common.termination import TerminationReason, Verdict
from devops.skypilot.common.values import ConfigError
from devops.skypilot.node.environment import flight_recorder_dump
from devops.skypilot.node.monitors.base import Monitor
from devops.skypilot.node.monitors.setup import MonitorSetup

#: Longest line kept in a detail: enough to read, never a flood.
MAX_DETAIL_LINE = 500


@dataclass(frozen=True)
class LogPattern:
    pattern: re.Pattern[str]
    reason: TerminationReason

    @classmethod
    def of(cls, regex: str, reason: TerminationReason) -> LogPattern:
        return cls(re.compile(regex), reason)


_CUDA, _NCCL = TerminationReason.CUDA_ERROR, TerminationReason.NCCL_ERROR

#: torch's NCCL watchdog (ProcessGroupNCCL): a collective hung past its timeout,
#: or the watchdog itself is stuck. A ``rank`` group puts that rank's flight
#: recorder dump path in the detail.
WATCHDOG_PATTERNS: tuple[LogPattern, ...] = (
    LogPattern.of(r"\[Rank (?P<rank>\d+)\] Watchdog caught collective operation timeout", _NCCL),
    LogPattern.of(r"Rank (?P<rank>\d+)\]\s+failure detected by watchdog at work sequence", _NCCL),
    LogPattern.of(r"Watchdog caught collective operation timeout", _NCCL),
    LogPattern.of(r"Some NCCL operations have failed or timed out", _NCCL),
    LogPattern.of(r"Heartbeat monitor timed out! Process will be terminated", _NCCL),
    LogPattern.of(r"ProcessGroupNCCL's watchdog got stuck for \d+ seconds", _NCCL),
)

DEFAULT_PATTERNS: tuple[LogPattern, ...] = (
    *WATCHDOG_PATTERNS,
    LogPattern.of(r"\bNCCL error\b|\bnccl(?:Internal|System|UnhandledCuda|Remote)Error\b", _NCCL),
    LogPattern.of(r"CUDA out of memory", _CUDA),
    LogPattern.of(r"an illegal memory access was encountered", _CUDA),
    LogPattern.of(r"uncorrectable ECC error encountered", _CUDA),
    LogPattern.of(r"\bXid\b", _CUDA),
)


def patterns_from_config(section: Mapping[str, Any] | None) -> tuple[LogPattern, ...]:
    """The pattern table for a ``[log_patterns]`` section (None: the defaults)."""
    if section is None:
        return DEFAULT_PATTERNS
    entries = section.get("match", [])
    if not isinstance(entries, list):
        raise ConfigError("[log_patterns] match must be an array of tables")
    own = [_entry(index, entry) for index, entry in enumerate(entries)]
    keep_defaults = section.get("defaults", True)
    if not isinstance(keep_defaults, bool):
        raise ConfigError("[log_patterns] defaults must be true or false")
    return (*own, *(DEFAULT_PATTERNS if keep_defaults else ()))


def _entry(index: int, entry: Any) -> LogPattern:
    where = f"[[log_patterns.match]] #{index + 1}"
    if not isinstance(entry, dict) or not isinstance(entry.get("pattern"), str):
        raise ConfigError(f"{where}: needs a string `pattern`")
    try:
        reason = TerminationReason(entry.get("reason", ""))
    except ValueError:
        names = ", ".join(reason.value for reason in TerminationReason)
        raise ConfigError(f"{where}: reason must be one of {names}") from None
    try:
        return LogPattern.of(entry["pattern"], reason)
    except re.error as error:
        raise ConfigError(f"{where}: bad regular expression: {error}") from None


class LogPatternMonitor(Monitor):
    """Stops the job on the first output line that matches a fatal pattern."""

    interval = 0.2

    def __init__(
        self,
        patterns: Sequence[LogPattern] = DEFAULT_PATTERNS,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.patterns = tuple(patterns)
        #: The command's environment: where torch writes its flight recorder dumps.
        self._env = env or {}
        self._match: Verdict | None = None
        self._lock = threading.Lock()

    @classmethod
    def create(cls, setup: MonitorSetup) -> LogPatternMonitor | None:
        patterns = patterns_from_config(setup.config.file_sections.get("log_patterns"))
        return cls(patterns, setup.child_env) if patterns else None

    def observe_line(self, line: str) -> None:
        if self._match is not None:
            return
        for entry in self.patterns:
            match = entry.pattern.search(line)
            if match:
                detail = f"fatal log line: {line.strip()[:MAX_DETAIL_LINE]}"
                rank = match.groupdict().get("rank")
                dump = flight_recorder_dump(self._env, int(rank)) if rank else None
                if dump:
                    detail += f" (flight recorder dump: {dump})"
                verdict = Verdict(entry.reason, detail)
                with self._lock:
                    if self._match is None:
                        self._match = verdict
                return

    def check(self, now: float) -> Verdict | None:
        return self._match

    def explain(self) -> Verdict | None:
        return self._match
