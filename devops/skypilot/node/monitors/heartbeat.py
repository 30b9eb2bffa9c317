"""Hang detection: the command must touch its heartbeat file every so often."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from devops.skypilot.common.termination import TerminationReason, Verdict
from devops.skypilot.node.monitors.base import Monitor
from devops.skypilot.node.monitors.beat_gaps import Gaps, derive, load_gaps, save_gaps
from devops.skypilot.node.monitors.line_scan import LineScan
from devops.skypilot.node.monitors.rank_beats import RankBeats, never_beat
from devops.skypilot.node.monitors.setup import MonitorSetup

logger = logging.getLogger(__name__)

_Signature = tuple[int, int, int]


class HeartbeatMonitor(Monitor):
    """No beat for ``timeout`` seconds is a hang.

    A beat is any change of the file (inode, mtime or size): the client replaces
    the file on every beat, and ``touch`` works too. The time of a beat is when
    the monitor saw the change, on the monotonic clock, so clock jumps and coarse
    mtimes on network filesystems do not matter; the check interval (5 % of the
    timeout, at most 1 s) bounds how late a hang is seen.

    Before the first beat the deadline is ``max(startup_grace, timeout)`` after
    start: loading a checkpoint or compiling is not a hang. A file that was seen
    and then cannot be read at the deadline ends the job as
    HEARTBEAT_UNREADABLE with the error in the detail.
    """

    def __init__(
        self,
        path: Path,
        timeout: float,
        startup_grace: float = 0.0,
        progress: re.Pattern[str] | None = None,
        gaps_dir: Path | None = None,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.startup_grace = startup_grace
        self.interval = min(1.0, max(0.05, timeout * 0.05))
        self._started = 0.0
        self._last_beat: float | None = None
        self._signature: _Signature | None = None
        self._error: OSError | None = None
        #: Under torchrun each rank beats on its own file; a beat of any counts here.
        self.ranks = RankBeats(path)
        #: ``--progress-pattern``: an output line matching it is a beat.
        self.progress = progress
        self._scan = LineScan([(progress, ())]) if progress is not None else None
        #: When the last matching line was read (monotonic; written by the reader threads).
        self._line_beat: float | None = None
        self._file_beat = False
        #: ``--derived-timeout-factor``: the state dir the beat gaps are recorded in.
        self.gaps_dir = gaps_dir
        self._gaps = 0
        self._longest_gap = 0.0

    @classmethod
    def create(cls, setup: MonitorSetup) -> HeartbeatMonitor | None:
        config = setup.config
        if config.heartbeat_timeout <= 0:
            return None
        pattern = re.compile(config.progress_pattern) if config.progress_pattern else None
        timeout, grace = config.heartbeat_timeout, config.startup_grace
        factor = config.derived_timeout_factor
        derived = derive(load_gaps(config.state_dir), factor, timeout)
        if derived is not None:
            logger.warning("skyguard: %s", derived[1])
            # The first beat keeps the configured deadline: a startup is not a gap.
            timeout, grace = derived[0], max(grace, timeout)
        gaps_dir = config.state_dir if factor > 0 else None
        return cls(config.heartbeat_file, timeout, grace, pattern, gaps_dir)

    def start(self, now: float) -> None:
        self._started = now
        self._last_beat = None
        self._line_beat = None
        self._file_beat = False
        self._error = None
        self._gaps, self._longest_gap = 0, 0.0
        # A file left from an earlier attempt is not a beat of this one.
        self._signature = self._stat()
        self.ranks.start()

    def _stat(self) -> _Signature | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError as error:
            # Missing before the file's first beat is normal; after it, the file was
            # lost (rank files and progress lines beat without it).
            self._error = error if self._file_beat else None
            return None
        except OSError as error:
            self._error = error
            return self._signature
        self._error = None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    @property
    def reads_output(self) -> bool:
        # Only with --progress-pattern: otherwise not one byte of a chatty job's
        # output is split or decoded for this monitor.
        return self.progress is not None

    def observe_line(self, line: str) -> None:
        # One float assignment: safe from the reader threads without a lock.
        if self.progress is not None and self.progress.search(line):
            self._line_beat = time.monotonic()

    def observe_output(self, block: bytes) -> None:
        self.observe_span(block, 0, len(block))

    def observe_span(self, data: bytes, start: int, end: int) -> None:
        """A block is a beat if any of its lines matches: the candidates of one
        MULTILINE search over the block, each confirmed on its own line."""
        if self._scan is not None and any(
            self.progress is not None and self.progress.search(line)
            for _, line in self._scan.candidates(data, start, end)
        ):
            self._line_beat = time.monotonic()

    def _deadline(self) -> float:
        if self._last_beat is None:
            return self._started + max(self.startup_grace, self.timeout)
        return self._last_beat + self.timeout

    def next_check(self, now: float) -> float:
        rank_deadline = self.ranks.next_deadline(self.timeout)
        return min(now + self.interval, self._deadline(), rank_deadline or self._deadline())

    def _silent_ranks(self, now: float) -> dict[int, int]:
        """Ranks that never beat, a timeout after another rank's first beat.

        Only once two ranks or more beat: a job that beats from rank 0 alone (its
        collectives drag it along) has ranks that never beat by design. Not the
        startup grace: the job is past its startup once a rank beats, and a rank a
        whole timeout behind the first is stuck, not loading.
        """
        first = self.ranks.first_beat
        if first is None or now < first + self.timeout or len(self.ranks.beaten()) < 2:
            return {}
        return self.ranks.silent()

    def stop(self) -> None:
        """Record this attempt's beat gaps (``--derived-timeout-factor``): job-wide, and
        each rank's own (a rank's gap can be longer than the job's)."""
        if self.gaps_dir is not None and self._gaps:
            longest = max(self._longest_gap, self.ranks.longest_gap)
            gaps = Gaps(self._gaps, round(longest, 3), self.interval)
            save_gaps(self.gaps_dir, gaps)

    def _beat_at(self, when: float) -> None:
        if self._last_beat is not None and when > self._last_beat:
            self._gaps += 1
            self._longest_gap = max(self._longest_gap, when - self._last_beat)
        self._last_beat = when

    def check(self, now: float) -> Verdict | None:
        waiting = self._last_beat is None
        signature = self._stat()
        beat = self.ranks.scan(now)
        if signature is not None and signature != self._signature:
            beat = self._file_beat = True
        self._signature = signature
        line_beat = self._line_beat
        if line_beat is not None and (self._last_beat is None or line_beat > self._last_beat):
            self._beat_at(min(line_beat, now))
        if beat:
            self._beat_at(now)
        if waiting and self._last_beat is not None:
            # How long the start took: what --startup-grace has to cover.
            logger.info("skyguard: first heartbeat %.1fs after the start", now - self._started)
        # Beats are paced by the client (a tenth of the timeout, at most 1 s) and seen
        # up to one interval late: ranks closer than that stopped together.
        margin = min(1.0, self.timeout / 10) + self.interval
        silent = self._silent_ranks(now)
        if silent:
            waited = now - (self.ranks.first_beat or now)
            detail = never_beat(silent, waited, self.ranks.beaten(), self.timeout)
            return Verdict(TerminationReason.HEARTBEAT_TIMEOUT, detail, ranks=tuple(sorted(silent)))
        blamed, detail = self.ranks.stale(now, self.timeout, margin)
        if detail:
            return Verdict(TerminationReason.HEARTBEAT_TIMEOUT, detail, ranks=blamed)
        if now < self._deadline():
            return None
        if self._error is not None:
            return Verdict(
                TerminationReason.HEARTBEAT_UNREADABLE,
                f"heartbeat file {self.path} unreadable at the deadline: "
                f"[errno {self._error.errno}] {self._error.strerror}",
            )
        if self._last_beat is None:
            waited = max(self.startup_grace, self.timeout)
            return Verdict(
                TerminationReason.HEARTBEAT_TIMEOUT,
                f"no first heartbeat within {waited:g}s of start",
            )
        return Verdict(
            TerminationReason.HEARTBEAT_TIMEOUT,
            f"no heartbeat for {now - self._last_beat:.1f}s (timeout {self.timeout:g}s)",
        )
