"""The one-line summary and the stack parsers, on stacks written out by hand."""

from __future__ import annotations

import json
from pathlib import Path

from devops.skypilot.common.forensics import Forensics
from devops.skypilot.node.forensics.capture import Captured, Target
from devops.skypilot.node.forensics.stacks import Frame, Stack, from_faulthandler, from_py_spy
from devops.skypilot.node.forensics.summary import summarize

TORCH = "/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py"


def _stack(*frames: tuple[str, str, int]) -> Stack:
    return Stack(tuple(Frame(*frame) for frame in frames))


def _at(rank: int | None, stack: Stack | None, pid: int = 0, error: str = "") -> Captured:
    return Captured(Target(pid or 4000 + (rank or 0), rank), stack, "py-spy", error)


IN_ALL_REDUCE = _stack(("all_reduce", TORCH, 2501), ("_run_epoch", "/job/train.py", 70))
IN_BARRIER = _stack(("barrier", TORCH, 4100), ("main", "/job/train.py", 90))
IN_TRAIN = _stack(("_run_epoch", "/job/train.py", 64))


def test_the_rank_outside_the_collective_is_the_odd_one_out() -> None:
    summary = summarize([_at(0, IN_ALL_REDUCE), _at(1, IN_TRAIN), _at(2, IN_ALL_REDUCE)])
    assert summary == (
        "rank 1 (pid 4001) at train.py:64 (_run_epoch); "
        "ranks 0, 2: in all_reduce at train.py:70 (_run_epoch)"
    )


def test_the_heartbeat_suspect_wins_over_the_shape_of_the_stacks() -> None:
    results = [_at(0, IN_ALL_REDUCE), _at(1, IN_BARRIER)]
    assert summarize(results, suspects=[1]).startswith("rank 1 (pid 4001) in barrier at train.py")
    # Without a suspect, two ranks in two collectives: nobody is singled out.
    assert summarize(results) == (
        "rank 0: in all_reduce at train.py:70 (_run_epoch); "
        "rank 1: in barrier at train.py:90 (main)"
    )


def test_a_rank_in_a_recv_never_joined_the_collective_the_others_wait_in() -> None:
    in_recv = _stack(("recv", TORCH, 2800), ("main", "/job/worker.py", 133))
    assert summarize([_at(0, IN_ALL_REDUCE), _at(1, in_recv)]) == (
        "rank 1 (pid 4001) in recv at worker.py:133 (main); "
        "rank 0: in all_reduce at train.py:70 (_run_epoch)"
    )
    # All in send/recv (a pipeline): no collective to have missed, nobody singled out.
    in_send = _stack(("send", TORCH, 2700), ("main", "/job/worker.py", 120))
    assert summarize([_at(0, in_send), _at(1, in_recv)]).startswith("rank 0: in send")


def test_the_smallest_group_is_odd_when_all_wait_in_collectives() -> None:
    results = [_at(rank, IN_ALL_REDUCE) for rank in range(9)] + [_at(9, IN_BARRIER)]
    summary = summarize(results)
    assert summary.startswith("rank 9 (pid 4009) in barrier at train.py:90 (main); ")
    assert summary.endswith(
        "ranks 0, 1, 2, 3, 4, 5 and 3 more: in all_reduce at train.py:70 (_run_epoch)"
    )


def test_the_launcher_is_left_out_and_missing_ranks_are_said() -> None:
    launcher = Captured(Target(10, None), IN_BARRIER, "py-spy")
    results = [launcher, _at(0, IN_TRAIN), _at(1, None, error="py-spy timed out")]
    assert summarize(results) == (
        "rank 0: at train.py:64 (_run_epoch); no stack for rank 1 (pid 4001) (py-spy timed out)"
    )
    # With no rank anywhere, processes are named by pid.
    assert summarize([launcher]) == "pid 10: in barrier at train.py:90 (main)"


def test_py_spy_json_keeps_the_main_thread() -> None:
    text = json.dumps(
        [
            {
                "thread_name": "pt_autograd",
                "frames": [{"name": "run", "filename": "t.py", "line": 1}],
            },
            {
                "thread_name": "MainThread",
                "frames": [
                    {"name": "_run_epoch", "filename": "/job/train.py", "line": 64},
                    {"name": "<module>", "filename": "/job/train.py", "line": 99},
                ],
            },
        ]
    )
    assert from_py_spy(text) == _stack(
        ("_run_epoch", "/job/train.py", 64), ("<module>", "/job/train.py", 99)
    )
    assert from_py_spy("Error: Permission denied") is None
    assert from_py_spy("[]") is None


def test_faulthandler_text_keeps_the_last_thread_of_the_last_dump() -> None:
    dump = (
        "Thread 0x00007f37e86e86c0 (most recent call first):\n"
        '  File "/usr/lib/python3.11/threading.py", line 982 in run\n'
        "\n"
        "Current thread 0x00007f37e944eb80 (most recent call first):\n"
        '  File "/job/train.py", line {line} in _run_epoch\n'
        '  File "/job/train.py", line 99 in <module>\n'
    )
    text = dump.format(line=50) + dump.format(line=64)
    assert from_faulthandler(text) == _stack(
        ("_run_epoch", "/job/train.py", 64), ("<module>", "/job/train.py", 99)
    )
    assert from_faulthandler("") is None


def test_the_record_entry_round_trips(tmp_path: Path) -> None:
    entry = Forensics("rank 1 (pid 2) at t.py:3 (f)", str(tmp_path), 3, 2, 41.5, ("py-spy",))
    assert Forensics.from_json(json.loads(json.dumps(entry.to_json()))) == entry
