"""Children that misbehave on their output: floods, no newlines, invalid UTF-8, fatal
lines split across reads, closed pipes, alarming text in a healthy job, an ``env`` dump.
"""

from __future__ import annotations

import fcntl
import os
import random
import sys
import termios
import time
from pathlib import Path

from tests.faults.moments import beat_for, hang, ready, wait_for_go


def close_stdout(code: str) -> int:
    """EOF on both pipes long before the exit: the runner must wait for the real exit."""
    print("closing stdout and stderr", flush=True)
    os.close(1)
    os.close(2)
    time.sleep(0.5)
    return int(code)


def flood(megabytes: str) -> int:
    """``megabytes`` MB of output as fast as the pipe takes it: lines, then one
    8 MB line without a newline (the runner must cut it, not buffer it whole)."""
    total = int(megabytes) * 2**20
    line = b"x" * 1023 + b"\n"
    chunk = line * 64
    long_line = 8 * 2**20
    written = 0
    out = sys.stdout.fileno()
    while written < total - long_line:
        written += os.write(out, chunk)
    piece = b"y" * 65536
    while written < total:
        written += os.write(out, piece)
    os.write(out, b"\nflood: done\n")
    return 0


INVALID = b"bad bytes \xff\xfe\xc3\x28 then RuntimeError: CUDA out of memory. Tried 2 GiB\n"


def invalid_utf8() -> int:
    os.write(sys.stdout.fileno(), INVALID)
    return 1


def numbered_lines(count: int) -> bytes:
    """``count`` distinct lines of 100 bytes each."""
    return b"".join(b"line %06d %s\n" % (index, b"." * 87) for index in range(count))


FATAL_AFTER_FLOOD = b"RuntimeError: CUDA error: an illegal memory access was encountered\n"


def flood_lines(megabytes: str, pipe_file: str) -> int:
    """A chatty job: ``megabytes`` MB of 100-byte lines as fast as the pipe takes them,
    then one certainly fatal line, then a hang (the runner must stop it). Notes the
    capacity of its stdout pipe, which the runner grows so the job blocks less."""
    Path(pipe_file).write_text(str(fcntl.fcntl(1, fcntl.F_GETPIPE_SZ)))
    chunk = numbered_lines(10000)
    out = sys.stdout.fileno()
    for _ in range(int(megabytes)):
        view = memoryview(chunk)
        while view:
            view = view[os.write(out, view) :]
    os.write(out, FATAL_AFTER_FLOOD)
    hang()
    return 0


def split_output() -> bytes:
    """What ``fatal-split-across-reads`` writes before its fatal line: 3 MiB without a
    newline (the runner cuts it in pieces for the monitors), then 4 MiB of lines."""
    letters = bytes(ord("a") + i % 26 for i in range(3 * 2**20))
    return letters + b"\n" + numbered_lines(4 * 2**20 // 100)


def fatal_split_across_reads() -> int:
    """A fatal line the runner reads in two pieces: its first half is in the pipe alone
    until the runner has taken it (FIONREAD on our end says 0), then the rest comes."""
    out = sys.stdout.fileno()
    data = split_output() + FATAL_AFTER_FLOOD
    half = len(data) - len(FATAL_AFTER_FLOOD) // 2
    for part in (data[:half], data[half:]):
        view = memoryview(part)
        while view:
            view = view[os.write(out, view) :]
        while _unread(out):
            time.sleep(0.01)
    hang()
    return 0


def _unread(fd: int) -> int:
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)


def print_env() -> int:
    """What a training script's ``env`` dump would put in the log."""
    for name, value in sorted(os.environ.items()):
        print(f"{name}={value}")
    return 0


def print_after_go(lines: str, code: str) -> int:
    """Print once the test says so (the runner's own stdout is closed by then), then exit."""
    ready()
    wait_for_go()
    for index in range(int(lines)):
        print(f"after go {index}", flush=True)
    return int(code)


def say(text: str, seconds: str = "1", code: str = "0", filler: str = "0", error: str = "") -> int:
    """Print ``text``, then ``filler`` ordinary lines (and ``error`` on stderr), beat for
    ``seconds``, exit ``code``: a job that prints something alarming and then goes on
    (or fails on its own)."""
    print(text, flush=True)
    for step in range(int(filler)):
        print(f"step {step} loss 0.1")
    if error:
        print(error, file=sys.stderr, flush=True)
    beat_for(seconds)
    return int(code)


def random_bytes(megabytes: str, seed: str) -> int:
    """``megabytes`` MB of seeded random bytes on stdout, then a second of beats, exit 0."""
    data = random.Random(int(seed)).randbytes(int(megabytes) * 2**20)
    view = memoryview(data)
    while view:
        view = view[os.write(sys.stdout.fileno(), view[:65536]) :]
    beat_for("1")
    return 0
