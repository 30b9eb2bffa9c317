"""One process's Python stack, read from what py-spy or faulthandler wrote.

Both tools list frames innermost first; only the main thread's stack is kept,
because that is where a training loop hangs (py-spy names it, faulthandler lists
it last). Frames of the interpreter and of installed packages are "library"
frames: the innermost frame that is neither is the line a person wants to see.
"""

from __future__ import annotations

import json
import linecache
import re
import sysconfig
from dataclasses import dataclass
from typing import Any

#: Where installed code lives: a frame there is not the user's line.
_LIBRARY_MARKERS = ("/site-packages/", "/dist-packages/", "<frozen ", "<string>")
_STDLIB = sysconfig.get_paths()["stdlib"]
#: Frames that mean "waiting for the other ranks": a rank here is a victim, not a culprit.
COLLECTIVE = re.compile(
    r"all_reduce|all_gather|reduce_scatter|broadcast|barrier|all_to_all|"
    r"send|recv|wait|_sync_params|backward|monitored_barrier",
)
#: Of those, the point-to-point ones: a rank here waits for one peer, not in the group's collective.
POINT_TO_POINT = re.compile(r"^i?(?:send|recv)$")
_FAULTHANDLER_FRAME = re.compile(r'^\s+File "(?P<file>.*)", line (?P<line>\d+) in (?P<name>.*)$')


@dataclass(frozen=True)
class Frame:
    function: str
    filename: str
    line: int

    @property
    def library(self) -> bool:
        return self.filename.startswith(_STDLIB) or any(
            marker in self.filename for marker in _LIBRARY_MARKERS
        )

    @property
    def where(self) -> str:
        """``train.py:64``: the short form a one-line summary can afford."""
        return f"{self.filename.rsplit('/', 1)[-1]}:{self.line}"

    def source(self) -> str:
        """The line of code itself (empty when the file is not readable here)."""
        return linecache.getline(self.filename, self.line).strip()


@dataclass(frozen=True)
class Stack:
    """The main thread of one process, innermost frame first."""

    frames: tuple[Frame, ...]

    def user_frame(self) -> Frame | None:
        """The innermost frame of the user's own code."""
        return next((frame for frame in self.frames if not frame.library), None)

    def in_collective(self) -> bool:
        return any(COLLECTIVE.search(frame.function) for frame in self.frames[:3])

    def in_point_to_point(self) -> bool:
        """Waiting in a ``send``/``recv`` (the innermost waiting frame is one)."""
        waits = [frame for frame in self.frames[:3] if COLLECTIVE.search(frame.function)]
        return bool(waits) and POINT_TO_POINT.match(waits[0].function) is not None

    def signature(self) -> tuple[tuple[str, str, int], ...]:
        """Equal for processes stuck at the same place."""
        return tuple((frame.function, frame.filename, frame.line) for frame in self.frames)


def from_py_spy(text: str) -> Stack | None:
    """The main thread of ``py-spy dump --json`` output; None if it holds none."""
    try:
        threads: Any = json.loads(text)
    except ValueError:
        return None
    if not isinstance(threads, list) or not threads:
        return None
    main = next(
        (
            thread
            for thread in threads
            if isinstance(thread, dict) and thread.get("thread_name") == "MainThread"
        ),
        threads[0],
    )
    frames = tuple(
        Frame(str(frame.get("name", "?")), str(frame.get("filename", "?")), int(frame["line"]))
        for frame in main.get("frames", ())
        if isinstance(frame, dict) and isinstance(frame.get("line"), int)
    )
    return Stack(frames) if frames else None


def from_faulthandler(text: str) -> Stack | None:
    """The last dump's main thread (listed last) from a faulthandler file."""
    threads: list[list[Frame]] = []
    for line in text.splitlines():
        if line.startswith(("Thread 0x", "Current thread 0x")):
            threads.append([])
        elif threads and (match := _FAULTHANDLER_FRAME.match(line)):
            threads[-1].append(
                Frame(match.group("name"), match.group("file"), int(match.group("line")))
            )
    if not threads or not threads[-1]:
        return None
    return Stack(tuple(threads[-1]))


def format_stack(stack: Stack) -> str:
    """The stack as a person reads it in ``stacks.txt``, innermost first."""
    lines = []
    for frame in stack.frames:
        code = frame.source()
        lines.append(f"  {frame.function} ({frame.filename}:{frame.line})")
        if code:
            lines.append(f"      {code}")
    return "\n".join(lines)
