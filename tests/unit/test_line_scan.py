"""The log-pattern monitor fed whole blocks decides exactly as fed line by line."""

from __future__ import annotations

import random
import re

import pytest

from devops.skypilot.common.termination import TerminationReason as R
from devops.skypilot.node.monitors.line_scan import LineScan
from devops.skypilot.node.monitors.log_patterns import (
    DEFAULT_PATTERNS,
    EXPLAIN_WINDOW,
    Action,
    LogPattern,
    LogPatternMonitor,
)
from tests.unit.test_log_patterns import EXPLAIN, HEALTHY, STOP

#: Patterns without needles, each with a feature whose meaning a block could change.
OWN = (
    LogPattern.of(r"^FATAL: ", R.JOB_FAILED),  # anchored at the line's start
    LogPattern.of(r"giving up$", R.JOB_FAILED, Action.EXPLAIN),  # at its end
    LogPattern.of(r"rank\s+\d+ died", R.NCCL_ERROR),  # \s could cross a newline
    LogPattern.of(r"(?s)worker.*lost", R.JOB_FAILED, Action.EXPLAIN),  # . crosses it too
)
#: A lookbehind may look past the line's start: with it, every line is a candidate.
LOOKBEHIND = LogPattern.of(r"(?<![\w-])abort\b", R.JOB_FAILED)
TABLES = [DEFAULT_PATTERNS, (*OWN, *DEFAULT_PATTERNS), (LOOKBEHIND, *OWN, *DEFAULT_PATTERNS)]
TRICKY = [
    "FATAL: out of disk",
    "not FATAL: at the start",
    "we are giving up",
    "giving up? no",
    "abort",
    "pre-abort",
    "rank",
    "3 died",
    "rank 3 died",
    "worker 7",
    "was lost",
    "worker 7 was lost",
    "",
]


def _state(monitor: LogPatternMonitor) -> tuple[object, ...]:
    return (monitor.check(0.0), monitor.explain(), min(monitor._after, EXPLAIN_WINDOW + 1))


def _lines(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    messages = [line for line, _ in (*STOP, *EXPLAIN)] + HEALTHY + TRICKY
    pool = [line for message in messages for line in message.split("\n")]
    noise = [f"step {i} loss 0.{i % 97} lr 3e-4" for i in range(50)]
    return [rng.choice(pool) if rng.random() < 0.05 else rng.choice(noise) for _ in range(count)]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("patterns", TABLES)
def test_blocks_decide_as_lines_do(seed: int, patterns: tuple[LogPattern, ...]) -> None:
    lines = _lines(seed, 400)
    by_line, by_block = LogPatternMonitor(patterns), LogPatternMonitor(patterns)
    rng = random.Random(seed)
    start = 0
    while start < len(lines):
        end = min(len(lines), start + rng.randint(1, 60))
        for line in lines[start:end]:
            by_line.observe_line(line)
            # At every block boundary both have seen the same lines: same decision.
        # As the runner hands it over: a span of a read that holds other lines too.
        block = "\n".join(lines[start:end]).encode()
        around = rng.choice(lines).encode()
        read = around + b"\n" + block + b"\n" + around
        by_block.observe_span(read, len(around) + 1, len(around) + 1 + len(block))
        assert _state(by_block) == _state(by_line), (seed, start, end)
        start = end


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("patterns", TABLES)
@pytest.mark.parametrize("with_re2", [True, False])
def test_every_matching_line_is_a_candidate(
    seed: int, patterns: tuple[LogPattern, ...], with_re2: bool
) -> None:
    lines = _lines(seed, 400)
    block = "\n".join(lines).encode()
    monitor = LogPatternMonitor(patterns)
    matching = {index for index, line in enumerate(lines) if monitor._classify(line)}
    scan = LineScan((entry.pattern, entry.needles) for entry in patterns)
    _fallback_only(scan, with_re2)
    candidates = scan.candidates(block)
    assert all(lines[index] == line for index, line in candidates)
    assert matching, "nothing in these lines matches: the test would prove nothing"
    assert matching <= {index for index, _ in candidates}, sorted(matching)


def test_only_lines_that_may_match_are_cut_out() -> None:
    scan = LineScan((entry.pattern, entry.needles) for entry in DEFAULT_PATTERNS)
    block = "\n".join(["step 1", STOP[0][0], "step 2", "NVRM: Xid (nothing", "GPU 0", "step 3"])
    assert [index for index, _ in scan.candidates(block.encode())] == [1, 3]
    assert scan.candidates(b"step 1\nstep 2") == []


def test_a_lookaround_makes_every_line_a_candidate() -> None:
    scan = LineScan([(re.compile(r"(?<!x)y"), ())])
    assert scan.candidates(b"a\nb") == [(0, "a"), (1, "b")]


def test_a_match_across_lines_does_not_hide_a_later_one() -> None:
    scan = LineScan([(re.compile(r"a\s+b"), ())])
    assert scan.candidates(b"x a\nb y\nq a b") == [(0, "x a"), (2, "q a b")]


@pytest.mark.parametrize("with_re2", [True, False])
def test_lines_around_multibyte_text_come_back_whole(with_re2: bool) -> None:
    scan = LineScan([(re.compile("NVRM: Xid"), ("NVRM",)), (re.compile(r"^ÉCHEC"), ())])
    _fallback_only(scan, with_re2)
    lines = ["étape ✓ 1", "ÉCHEC ✗", "données \ufffd NVRM: Xid 79", "fin", "NVRM ✓"]
    block = "\n".join(lines).encode()
    assert scan.candidates(block) == [(1, lines[1]), (2, lines[2]), (4, lines[4])]


def test_invalid_utf8_around_a_needle_is_replaced_not_hiding_it() -> None:
    scan = LineScan([(re.compile("NVRM: Xid"), ("NVRM: Xid",)), (re.compile("é!"), ("é!",))])
    block = b"ok\n\xe2NVRM: Xid 79\xff\nfin\n\xc3\xc3\xa9!"
    assert scan.candidates(block) == [(1, "\ufffdNVRM: Xid 79\ufffd"), (3, "\ufffdé!")]


def test_a_needle_holding_a_replacement_character_is_searched_decoded() -> None:
    scan = LineScan([(re.compile("bad \ufffd byte"), ("bad \ufffd byte",))])
    assert scan.needles == () and scan.expressions
    assert scan.candidates(b"ok\nbad \xff byte\nok") == [(1, "bad \ufffd byte")]


def _fallback_only(scan: LineScan, with_re2: bool) -> None:
    """Make every block take the fallback: RE2, or (as without the extra) a find each."""
    if with_re2:
        pytest.importorskip("re2", reason="the fastlogs extra is not installed")
        assert scan.finder._regex is not None
    else:
        scan.finder._regex = None
    scan.finder._skip = 10**9
