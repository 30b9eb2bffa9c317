"""Per-rank heartbeats: each rank of the node beats on its own file.

Under torchrun (``RANK`` set) the heartbeat client writes
``<heartbeat-file>.rank-<RANK>`` (:func:`devops.skypilot.heartbeat.rank_file`). This
tracks when each rank's file last changed, on the monotonic clock of the
:class:`~devops.skypilot.node.monitors.heartbeat.HeartbeatMonitor` that owns it, so
that a rank which stops while the others keep beating (no per-step collective to
drag them along) is a hang too, and a hang names the rank(s) that stopped first.

A rank whose process is gone (it finished, or crashed and the launcher will say
so) is not watched any more: only a live process that stopped beating is hung.

A rank that never beats at all has no file to watch: :meth:`RankBeats.silent`
finds it among the runner's live descendants (a process with ``RANK`` in its
environment), once the other ranks have been beating for a whole timeout.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

_Signature = tuple[int, int, int]


@dataclass
class _Rank:
    signature: _Signature
    #: Monotonic time the runner saw its last beat; None: only a file left from before.
    last_beat: float | None = None
    pid: int | None = None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class RankBeats:
    """Every ``<heartbeat-file>.rank-N`` of the node, and when each last changed."""

    def __init__(self, heartbeat_file: Path, root: int | None = None) -> None:
        self.directory = heartbeat_file.parent
        self.prefix = f"{heartbeat_file.name}.rank-"
        self._ranks: dict[int, _Rank] = {}
        #: Whose descendants are the ranks: the runner itself, which the monitors run in.
        self.root = os.getpid() if root is None else root
        #: When this attempt's first rank beat (monotonic); None before.
        self.first_beat: float | None = None
        #: Gaps between two beats of one rank seen this attempt, and the longest.
        self.gaps = 0
        self.longest_gap = 0.0
        #: ``RANK`` of each descendant seen, by (pid, create time): environments do not change.
        self._rank_env: dict[tuple[int, float], int | None] = {}

    def start(self) -> None:
        """Files left from an earlier attempt are not beats of this one."""
        self._ranks = {rank: _Rank(signature) for rank, signature in self._files().items()}
        self.first_beat = None
        self.gaps, self.longest_gap = 0, 0.0

    def _files(self) -> dict[int, _Signature]:
        found: dict[int, _Signature] = {}
        try:
            names = os.listdir(self.directory)
        except OSError:
            return found
        for name in names:
            suffix = name[len(self.prefix) :]
            if name.startswith(self.prefix) and suffix.isdigit():
                with contextlib.suppress(OSError):
                    stat = os.stat(self.directory / name)
                    found[int(suffix)] = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        return found

    def scan(self, now: float) -> bool:
        """Look at every rank file; True if any rank beat since the last scan."""
        beat = False
        for rank, signature in self._files().items():
            known = self._ranks.get(rank)
            if known is not None and known.signature == signature:
                continue
            if known is not None and known.last_beat is not None:
                self.gaps += 1
                self.longest_gap = max(self.longest_gap, now - known.last_beat)
            self._ranks[rank] = _Rank(signature, now, self._pid(rank))
            beat = True
        if beat and self.first_beat is None:
            self.first_beat = now
        return beat

    def silent(self) -> dict[int, int]:
        """Live rank processes (rank -> pid) below the runner that never beat this attempt.

        Only the outermost process of a rank counts: its data-loader workers
        inherit its ``RANK``. Reading an environment costs a ``/proc`` read, so
        each process's is read once.
        """
        beaten = {rank for rank, state in self._ranks.items() if state.last_beat is not None}
        try:
            tree = psutil.Process(self.root).children(recursive=True)
        except psutil.Error:
            return {}
        found: dict[int, int] = {}
        for process in tree:
            rank = self._rank_of(process)
            if rank is None or rank in beaten or rank in found:
                continue
            with contextlib.suppress(psutil.Error):
                if process.status() != psutil.STATUS_ZOMBIE:
                    found[rank] = process.pid
        return found

    def _rank_of(self, process: psutil.Process) -> int | None:
        try:
            key = (process.pid, process.create_time())
        except psutil.Error:
            return None
        if key not in self._rank_env:
            try:
                raw = process.environ().get("RANK", "")
            except psutil.Error:
                raw = ""
            self._rank_env[key] = int(raw) if raw.isdigit() else None
        return self._rank_env[key]

    def _pid(self, rank: int) -> int | None:
        """The beating process, from the file's ``<time> <pid> <count>`` line."""
        try:
            fields = (self.directory / f"{self.prefix}{rank}").read_text().split()
            return int(fields[1])
        except (OSError, IndexError, ValueError):
            return None

    def beaten(self) -> list[int]:
        return sorted(rank for rank, state in self._ranks.items() if state.last_beat is not None)

    def _watched(self) -> dict[int, float]:
        return {
            rank: state.last_beat
            for rank, state in self._ranks.items()
            if state.last_beat is not None and _alive(state.pid)
        }

    def next_deadline(self, timeout: float) -> float | None:
        watched = self._watched()
        return min(watched.values()) + timeout if watched else None

    def stale(self, now: float, timeout: float, margin: float) -> tuple[tuple[int, ...], str]:
        """The rank(s) to blame and the detail, once a rank had no beat for ``timeout``.

        The detail names the rank(s) that stopped first and how the others fared.
        Ranks whose last beats lie within ``margin`` (the client's pacing plus the
        check's lateness) of the first stopped *together*: their order is noise. The
        first are *blamed* only while another rank is still beating (within
        ``margin`` of now): a rank that hung alone. When all stopped, even at
        different times, none is: ranks drawn into one collective stop a step apart
        in any order, and the stacks say better who is odd. ``((), '')`` while no
        rank is late.
        """
        watched = self._watched()
        if not watched or now - min(watched.values()) < timeout:
            return (), ""
        first = min(watched.values())
        stopped = sorted(rank for rank, last in watched.items() if last <= first + margin)
        others = {rank: last for rank, last in watched.items() if rank not in stopped}
        detail = (
            f"no heartbeat from {_ranks(stopped)} for {now - first:.1f}s (timeout {timeout:g}s)"
        )
        if not others:
            return (), f"{detail}, all within {margin:.1f}s of each other"
        beating = sorted(rank for rank, last in others.items() if now - last <= margin)
        later = sorted(rank for rank in others if rank not in beating)
        if later:
            lead = min(others[rank] for rank in later) - max(watched[rank] for rank in stopped)
            detail += f"; {_ranks(later)} stopped {lead:.1f}s+ later"
        if beating:
            return tuple(stopped), f"{detail}; {_ranks(beating)} still beating"
        return (), detail


def never_beat(silent: dict[int, int], waited: float, beating: list[int], timeout: float) -> str:
    """The detail for ranks that never beat, ``waited`` s after ``beating`` began."""
    named = ", ".join(f"{rank} (pid {pid})" for rank, pid in sorted(silent.items()))
    word = "ranks" if len(silent) > 1 else "rank"
    return (
        f"no first heartbeat from {word} {named} {waited:.1f}s after "
        f"{_ranks(beating)} began beating (timeout {timeout:g}s)"
    )


def _ranks(ranks: list[int]) -> str:
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(str(rank) for rank in ranks)}"
