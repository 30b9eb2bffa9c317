"""The needle finder finds exactly the lines that hold a needle, whichever way it searches."""

from __future__ import annotations

import random

import pytest

from devops.skypilot.node.monitors.line_scan import LineScan
from devops.skypilot.node.monitors.log_table import DEFAULT_PATTERNS
from devops.skypilot.node.monitors.needles import NeedleFinder, choose_plan, find_by_plan

NEEDLES = tuple(
    n.encode() for n in LineScan((e.pattern, e.needles) for e in DEFAULT_PATTERNS).needles
)
#: Output of different kinds: what the benchmark writes, a real log, capitals, noise.
KINDS = {
    "steps": lambda rng, i: b"step %08d loss %s" % (i, b"." * rng.randint(0, 90)),
    "log": lambda rng, i: (
        b"[rank0]:INFO 2026-12-06 01:02:03,456 trainer.py:123] Epoch %d | Step %d | "
        b"Loss %.4f | GPU mem 71.2 GiB | CUDA graphs on | NCCL ok" % (i % 9, i, rng.random())
    ),
    "letters": lambda rng, i: bytes(ord("a") + (i + k) % 26 for k in range(rng.randint(1, 300))),
    "capitals": lambda rng, i: bytes(rng.choice(b"ABCDEFGHNRSTUVWX :") for _ in range(80)),
    "noise": lambda rng, i: rng.randbytes(rng.randint(0, 200)).replace(b"\n", b"."),
}


def _block(seed: int, kind: str, lines: int = 600, plant: bool = True) -> bytes:
    """Lines of one kind with needles planted at the start, middle, end of lines, and
    halves of needles that must not count."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        line = KINDS[kind](rng, i)
        roll = rng.random() if plant else 1.0
        if roll < 0.02:
            needle = rng.choice(NEEDLES)
            at = rng.choice([0, len(line) // 2, len(line)])
            line = line[:at] + needle + line[at:]
        elif roll < 0.04:
            needle = rng.choice(NEEDLES)
            line += needle[: len(needle) - 1]  # cut short: no needle
        out.append(line)
    return b"\n".join(out)


def _expected(block: bytes) -> set[int]:
    starts, position = set(), 0
    for line in block.split(b"\n"):
        if any(needle in line for needle in NEEDLES):
            starts.add(position)
        position += len(line) + 1
    return starts


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_way_finds_exactly_the_lines_with_a_needle(kind: str, seed: int) -> None:
    block = _block(seed, kind)
    expected = _expected(block)
    assert expected, "no needle planted: the test would prove nothing"
    finder = NeedleFinder(NEEDLES)
    assert finder.line_starts(block) == expected
    # The plan chosen from other output (its anchors may now hit on every line) ...
    for other in KINDS:
        plan = choose_plan(NEEDLES, _block(seed + 100, other, 200))
        found = find_by_plan(block, plan, budget=10**9)
        assert found is not None and found[0] == expected
        assert find_by_plan(block, plan, budget=0) in (None, (expected, 0))
    # ... and the fallbacks: RE2 (if installed), and one find per needle.
    assert finder._fallback(block) == expected
    finder._regex = None
    assert finder._fallback(block) == expected


def test_the_plan_adapts_when_the_output_changes() -> None:
    finder = NeedleFinder(NEEDLES)
    quiet = _block(1, "steps")
    assert finder.line_starts(quiet) == _expected(quiet)
    assert finder.last_way == "plan"
    # Capitals everywhere: the quiet output's anchors hit on every line.
    loud = _block(2, "capitals")
    for _ in range(3):
        assert finder.line_starts(loud) == _expected(loud)
    # Back to quiet output: after its rest, the finder chooses a plan again.
    ways, expected = [], _expected(quiet)
    for _ in range(200):
        assert finder.line_starts(quiet) == expected
        ways.append(finder.last_way)
    assert ways[-1] == "plan", ways


def test_quiet_output_is_not_searched_needle_by_needle() -> None:
    """The benchmark's kind of output: every needle has a byte it never holds."""
    plan = choose_plan(NEEDLES, _block(0, "steps", plant=False))
    assert not plan.whole and plan.hits_per_mib < 100
    assert len(plan.anchors) <= 8, plan.anchors


def test_needles_at_the_edges_of_a_block() -> None:
    finder = NeedleFinder(NEEDLES)
    first, last = NEEDLES[0], NEEDLES[-1]
    block = first + b" x\nplain\n" + b"y " + last
    assert finder.line_starts(block) == {0, len(first) + 9}
    assert finder.line_starts(first) == {0}
    assert finder.line_starts(first[1:]) == set()
    assert finder.line_starts(b"") == set()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_span_is_searched_in_place_as_its_slice_would_be(kind: str) -> None:
    """The runner hands the finder a read of the pipe with bounds: needles before the
    span, after it, and cut by either edge must not count; offsets are the read's."""
    needle = NEEDLES[0]
    # Needles cut in two by each edge of the span: whole only in the read.
    block = needle[3:] + b" x\n" + _block(7, kind) + b"\ny " + needle[:-3]
    before, after = b"x " + needle + b"\n" + needle[:3], needle[-3:] + b"\n" + needle
    data = before + block + after
    start, end = len(before), len(before) + len(block)
    expected = {at + start for at in _expected(block)}
    assert expected
    for search in (
        lambda finder: finder.line_starts(data, start, end),
        lambda finder: finder._fallback(data, start, end),
        lambda finder: (setattr(finder, "_regex", None), finder._fallback(data, start, end))[1],
    ):
        assert search(NeedleFinder(NEEDLES)) == expected
    for other in KINDS:
        plan = choose_plan(NEEDLES, _block(107, other, 200))
        found = find_by_plan(data, plan, 10**9, start, end)
        assert found is not None and found[0] == expected
