"""Fatal lines in the command's output, classified by a table of patterns.

The built-in table (:mod:`.log_table`) matches the real shapes of fatal messages;
only entries that are certainly fatal (``stop``) end a live job, the others
(``explain``) only say why the command failed once it failed on its own. The
table is data: extended or replaced from the config file::

    [log_patterns]
    defaults = true            # keep the built-in table (after your own entries)
    [[log_patterns.match]]
    pattern = "RuntimeError: DataLoader worker .* is killed"
    reason = "job_failed"
    action = "explain"         # or "stop" (the default for your own entries)

The first matching entry of a line wins; its line goes in the verdict's detail.
See docs/log-patterns.md.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from devops.skypilot.common.termination import TerminationReason, Verdict
from devops.skypilot.common.values import ConfigError
from devops.skypilot.node.environment import flight_recorder_dump
from devops.skypilot.node.monitors.base import Monitor
from devops.skypilot.node.monitors.line_scan import LineScan
from devops.skypilot.node.monitors.log_table import (
    DEFAULT_PATTERNS,
    WATCHDOG_PATTERNS,
    Action,
    LogPattern,
)
from devops.skypilot.node.monitors.setup import MonitorSetup

__all__ = [
    "DEFAULT_PATTERNS",
    "EXPLAIN_WINDOW",
    "WATCHDOG_PATTERNS",
    "Action",
    "LogPattern",
    "LogPatternMonitor",
    "patterns_from_config",
]

#: Longest line kept in a detail: enough to read, never a flood.
MAX_DETAIL_LINE = 500
#: An ``explain`` line explains a failure only if at most this many lines follow
#: it: a traceback and torchrun's summary fit; an out-of-memory error a batch-size
#: finder caught hours earlier does not explain an unrelated crash.
EXPLAIN_WINDOW = 1000


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
        action = Action(entry.get("action", Action.STOP.value))
    except ValueError:
        raise ConfigError(f"{where}: action must be stop or explain") from None
    try:
        return LogPattern.of(entry["pattern"], reason, action)
    except re.error as error:
        raise ConfigError(f"{where}: bad regular expression: {error}") from None


class LogPatternMonitor(Monitor):
    """Stops the job on a certainly fatal line; explains a failure by the last fatal-
    looking line near the end of the output."""

    interval = 0.2

    def __init__(
        self,
        patterns: Sequence[LogPattern] = DEFAULT_PATTERNS,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.patterns = tuple(patterns)
        #: The command's environment: where torch writes its flight recorder dumps.
        self._env = env or {}
        self._lock = threading.Lock()
        self._stop: Verdict | None = None
        #: The latest matching line of any action, and how many lines came after it
        #: (counted only up to ``EXPLAIN_WINDOW + 1``: past that it explains nothing).
        self._last: Verdict | None = None
        self._after = 0
        self._scan = LineScan((entry.pattern, entry.needles) for entry in self.patterns)

    @classmethod
    def create(cls, setup: MonitorSetup) -> LogPatternMonitor | None:
        patterns = patterns_from_config(setup.config.file_sections.get("log_patterns"))
        return cls(patterns, setup.child_env) if patterns else None

    def observe_line(self, line: str) -> None:
        found = self._classify(line)
        with self._lock:  # two reader threads (stdout, stderr) call this
            if found is None:
                if self._last is not None:
                    self._after += 1
                return
            entry, verdict = found
            self._last, self._after = verdict, 0
            if entry.action is Action.STOP and self._stop is None:
                self._stop = verdict

    def observe_lines(self, block: str) -> None:
        self.observe_output(block.encode("utf-8", "surrogatepass"))

    def observe_output(self, block: bytes) -> None:
        self.observe_span(block, 0, len(block))

    def observe_span(self, data: bytes, start: int, end: int) -> None:
        """A block at a time, undecoded and in place: only the lines the scan finds are
        decoded and classified, so the verdicts are those of :meth:`observe_line` on
        every line, at C speed. The block's lines are counted only where a verdict may
        need it."""
        found = [
            (index, result)
            for index, line in self._scan.candidates(data, start, end)
            if (result := self._classify(line)) is not None
        ]
        with self._lock:
            if not found and (self._last is None or self._after > EXPLAIN_WINDOW):
                return
            lines = data.count(b"\n", start, end) + 1
            if not found:
                self._after += lines
                return
            for _, (entry, verdict) in found:
                if entry.action is Action.STOP and self._stop is None:
                    self._stop = verdict
            index, (_, self._last) = found[-1]
            self._after = lines - index - 1

    def _classify(self, line: str) -> tuple[LogPattern, Verdict] | None:
        for entry in self.patterns:
            match = entry.search(line)
            if match:
                detail = f"fatal log line: {line.strip()[:MAX_DETAIL_LINE]}"
                rank = match.groupdict().get("rank")
                dump = flight_recorder_dump(self._env, int(rank)) if rank else None
                if dump:
                    detail += f" (flight recorder dump: {dump})"
                return entry, Verdict(entry.reason, detail)
        return None

    def check(self, now: float) -> Verdict | None:
        return self._stop

    def explain(self) -> Verdict | None:
        with self._lock:
            if self._stop is not None:
                return self._stop
            if self._last is not None and self._after <= EXPLAIN_WINDOW:
                return self._last
            return None
