"""The lines of a block of output that hold one of a set of literals (needles), found
without looking at every byte in Python, and mostly without looking at every byte at all.

Every byte a chatty job prints passes here, on the thread that copies it, so its
cost is the job's back-pressure. There is no multi-literal search in C in the
standard library: one ``bytes.find`` per needle costs ~1.4 GB/s each (18 needles:
~80 MB/s), one RE2 pass over the alternation ~600 MB/s, while ``bytes.find`` of a
single byte is ``memchr`` (tens of GB/s). So, cheapest first:

rare bytes
    Each needle is *anchored* on one of its bytes that is rare in the output seen so
    far; every anchor byte is found with ``memchr``, and each hit is checked with
    ``startswith`` for the needles anchored there. Cost: one ``memchr`` pass per
    distinct anchor byte, plus a fraction of a microsecond per hit. The anchors are
    chosen from the counts of the needles' bytes in a sample of the output, sharing
    a byte between needles where that costs no more hits.
RE2 (the ``fastlogs`` extra), else one ``find`` per needle
    A block where the anchors hit more than a budget (the output is full of them:
    random bytes, a log shouting in capitals) is searched this way instead, at a
    cost that does not depend on the bytes; the anchors are then chosen again from
    that block, and the rare-byte way is tried again after a growing number of blocks.

Every way finds exactly the lines that hold a needle: which way ran changes the
speed, never the result (tests/unit/test_needles.py compares them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

try:  # one pass for every needle where the anchors hit too often
    import re2
except ImportError:  # the fastlogs extra; without it that fallback is slower, not different
    re2 = None

#: Costs in units of one checked hit (~0.3 µs), per MiB of output searched.
#: A ``memchr`` pass for one byte (~35 µs a MiB).
_PASS_COST = 100
#: One RE2 pass for every needle (~1.7 ms a MiB on one core).
_RE2_COST = 5000
#: Hits per MiB above which the anchors give up on a block (the output changed).
_MIN_BUDGET = 4096
#: Bytes counted to choose the plan (``bytes.count`` of one byte is no memchr: ~1 GB/s).
_SAMPLE = 1 << 14
#: Output after which the plan is chosen again from fresh output.
_REPLAN_EVERY = 64 << 20
#: At most this many blocks go straight to the fallback after the plan failed.
_MAX_BACKOFF = 64

#: (anchor byte, ((needle, offset of the anchor in it), ...)), one per distinct anchor.
Anchors = tuple[tuple[bytes, tuple[tuple[bytes, int], ...]], ...]


def find_cost(needle: bytes) -> float:
    """One ``bytes.find`` pass for a whole needle: the longer, the farther each step
    skips (~1.5 GB/s for 4 bytes, 3-8 GB/s for 30)."""
    return 20000 / (len(needle) + 6)


@dataclass(frozen=True)
class Plan:
    """How to search a block: needles found by an anchor byte, needles found whole."""

    anchors: Anchors
    whole: tuple[bytes, ...]
    #: Anchor hits per MiB the sample predicts.
    hits_per_mib: float
    cost: float


class NeedleFinder:
    """Start offsets of the lines of a block (bytes, lines split by ``\\n``) that hold
    any of ``needles``. Safe to call from both reader threads: the shared state is
    only the plan, replaced whole."""

    def __init__(self, needles: Iterable[bytes]) -> None:
        self.needles = tuple(dict.fromkeys(needles))
        alternation = b"|".join(re.escape(needle) for needle in self.needles)
        self._regex: Any = re2.compile(alternation) if re2 and self.needles else None
        self._plan: Plan | None = None
        #: Bytes searched since the plan was chosen.
        self._searched = 0
        #: Blocks left to search by the fallback before a plan is tried again.
        self._skip = 0
        self._backoff = 0
        #: How the last block was searched (tests, the benchmark): "plan" or "fallback".
        self.last_way = ""

    def line_starts(self, block: bytes, start: int = 0, end: int | None = None) -> set[int]:
        """Offsets in ``block`` of the lines of ``block[start:end]`` that hold a needle
        (the span is searched in place: a read of the pipe is never copied for this)."""
        end = len(block) if end is None else end
        if not self.needles or start >= end:
            return set()
        self._searched += end - start
        if self._skip > 0:
            self._skip -= 1
            return self._fallback(block, start, end)
        plan = self._plan
        if plan is None or self._searched > _REPLAN_EVERY:
            plan = self._plan = choose_plan(self.needles, block[start : start + _SAMPLE])
            self._searched = 0
        if self._regex is None or plan.cost < _RE2_COST:
            mib = (end - start) / (1 << 20)
            budget = max(_MIN_BUDGET, 2 * plan.hits_per_mib) * mib
            found = find_by_plan(block, plan, max(_PASS_COST, int(budget)), start, end)
            if found is not None:
                self._backoff = 0
                self.last_way = "plan"
                starts, hits = found
                if hits > (2 * plan.hits_per_mib + _PASS_COST) * mib + _PASS_COST:
                    self._plan = None  # the output changed: choose again for the next block
                return starts
        # RE2 is cheaper for these bytes (or the anchors hit far more than the sample
        # said): use it, and choose again after a rest that doubles while the output
        # stays like this.
        self._plan = None
        self._backoff = min(_MAX_BACKOFF, self._backoff * 2 or 1)
        self._skip = self._backoff - 1
        return self._fallback(block, start, end)

    def _fallback(self, block: bytes, start: int = 0, end: int | None = None) -> set[int]:
        self.last_way = "fallback"
        end = len(block) if end is None else end
        if self._regex is None:
            found = find_by_plan(block, Plan((), self.needles, 0, 0), 0, start, end)
            assert found is not None  # no anchors: no budget to pass
            return found[0]
        starts: set[int] = set()
        position = start
        while (match := self._regex.search(block, position, end)) is not None:
            starts.add(_line_start(block, start, match.start()))
            after = block.find(b"\n", match.start(), end)
            if after < 0:
                break
            position = after + 1
        return starts


def choose_plan(needles: tuple[bytes, ...], sample: bytes) -> Plan:
    """For each needle, the cheapest way in ``sample``'s output: ``memchr`` for its
    rarest byte (a byte another needle already uses saves a pass), or a whole find."""
    counts = {byte: sample.count(bytes((byte,))) for byte in set(b"".join(needles))}
    scale = (1 << 20) / max(len(sample), 1)  # hits per MiB
    chosen: dict[int, list[tuple[bytes, int]]] = {}
    whole: list[bytes] = []
    cost = 0.0
    # The needles whose rarest byte is most common first: the others may then share it.
    for needle in sorted(needles, key=lambda n: min(counts[b] for b in n), reverse=True):

        def anchor_cost(offset: int, needle: bytes = needle) -> float:
            byte = needle[offset]
            return counts[byte] * scale + (0 if byte in chosen else _PASS_COST)

        offset = min(range(len(needle)), key=anchor_cost)
        if anchor_cost(offset) <= find_cost(needle):
            cost += anchor_cost(offset)
            chosen.setdefault(needle[offset], []).append((needle, offset))
        else:
            cost += find_cost(needle)
            whole.append(needle)
    anchors = tuple((bytes((byte,)), tuple(entries)) for byte, entries in sorted(chosen.items()))
    hits = sum(counts[byte] for byte in chosen) * scale
    return Plan(anchors, tuple(whole), hits, cost)


def find_by_plan(
    block: bytes, plan: Plan, budget: int, start: int = 0, end: int | None = None
) -> tuple[set[int], int] | None:
    """The line starts of ``block[start:end]`` (offsets in ``block``) that hold a needle
    and the anchor hits it took; None past ``budget`` anchor hits."""
    end = len(block) if end is None else end
    starts: set[int] = set()
    find, startswith = block.find, block.startswith
    hits = 0
    for byte, entries in plan.anchors:
        hit = find(byte, start, end)
        while hit >= 0:
            hits += 1
            if hits > budget:
                return None
            for needle, offset in entries:
                at = hit - offset
                if at >= start and startswith(needle, at, end):
                    starts.add(_line_start(block, start, at))
                    # One hit is enough for a line: go on after it.
                    hit = find(b"\n", hit, end)
                    break
            if hit < 0:
                break
            hit = find(byte, hit + 1, end)
    for needle in plan.whole:
        hit = find(needle, start, end)
        while hit >= 0:
            starts.add(_line_start(block, start, hit))
            after = find(b"\n", hit, end)
            hit = -1 if after < 0 else find(needle, after + 1, end)
    return starts, hits


def _line_start(block: bytes, start: int, at: int) -> int:
    """Where the line holding ``at`` begins: the span's start is a line's start."""
    newline = block.rfind(b"\n", start, at)
    return start if newline < 0 else newline + 1
