"""Capture the Python stack of each process, all at once, within a deadline.

Two ways, py-spy first, faulthandler where py-spy gives nothing:

* ``py-spy dump`` reads a process's stack from outside (ptrace). It needs no
  help from the process, so it sees a rank stuck in C as well as in Python, but
  it needs ptrace permission (``kernel.yama.ptrace_scope``, ``CAP_SYS_PTRACE`` in
  containers) and the optional ``forensics`` extra.
* faulthandler: the heartbeat client registered a handler for
  :data:`~devops.skypilot.stackdump.DUMP_SIGNAL` that writes every thread's stack
  into ``faulthandler-<pid>.txt`` here. Only processes whose file exists are
  signalled: the default action of that signal would kill the others.

A process is signalled only once its py-spy ended without a stack, or half the
time to the deadline has passed (a py-spy that hangs), or at once without
py-spy: a signal interrupts the C call a rank is blocked in, and one that does
not retry on ``EINTR`` (a ``select`` through ctypes, say) returns and lets the
rank run on, away from where it hung, while py-spy is reading it.

Nothing here waits past ``deadline``: a py-spy still running then is killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from devops.skypilot.node.forensics.stacks import Stack, from_faulthandler, from_py_spy
from devops.skypilot.stackdump import DUMP_SIGNAL, dump_file

#: How often the capture looks at its tools; short, the whole capture is bounded.
_POLL = 0.02


@dataclass(frozen=True)
class Target:
    pid: int
    #: The process's ``RANK`` (torchrun and most launchers set it), if any.
    rank: int | None = None


@dataclass(frozen=True)
class Captured:
    target: Target
    stack: Stack | None
    #: ``py-spy`` or ``faulthandler``: which tool gave the stack ('' if none did).
    source: str = ""
    #: Why there is no stack ("py-spy timed out", py-spy's error); with a stack from
    #: faulthandler, why py-spy gave none (ptrace forbidden, say).
    error: str = ""


def find_py_spy() -> str | None:
    """py-spy on PATH, else next to this interpreter (a venv not on PATH)."""
    found = shutil.which("py-spy")
    if found:
        return found
    sibling = Path(sys.executable).parent / "py-spy"
    return str(sibling) if os.access(sibling, os.X_OK) else None


class _Spy:
    """One ``py-spy dump --json`` run, its output in a file."""

    def __init__(self, py_spy: str, pid: int, directory: Path) -> None:
        self.output = directory / f"py-spy-{pid}.json"
        self.errors = directory / f"py-spy-{pid}.err"
        self.timed_out = False
        self._result: tuple[Stack | None, str] | None = None
        with self.output.open("wb") as out, self.errors.open("wb") as err:
            self.popen = subprocess.Popen(
                [py_spy, "dump", "--json", "--pid", str(pid)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                # Its error and cause, without a Rust backtrace of py-spy itself.
                env={**os.environ, "RUST_BACKTRACE": "0"},
            )

    def done(self) -> bool:
        return self.popen.poll() is not None

    def kill(self) -> None:
        self.timed_out = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def result(self) -> tuple[Stack | None, str]:
        """The stack, or why none; read once, after it ended."""
        if self.timed_out:
            return None, "py-spy timed out"
        if self._result is None:
            stack = from_py_spy(self.output.read_text(errors="replace"))
            why = "" if stack else _py_spy_error(self.errors.read_text(errors="replace"))
            why = why or f"exited {self.popen.returncode}"
            self._result = (stack, "" if stack else f"py-spy: {why}"[:200])
        return self._result


def _py_spy_error(text: str) -> str:
    """py-spy's error in one line: its message, then its innermost cause.

    ``Error: Failed to get process executable name. Check that the process is
    running.`` / ``Caused by:`` / ``0: Permission denied (os error 13)`` becomes
    ``Failed to get process executable name (Permission denied (os error 13))``:
    where ptrace is forbidden the cause is what tells a person why.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    message = lines[0].removeprefix("Error: ")
    causes = []
    if "Caused by:" in lines:
        for line in lines[lines.index("Caused by:") + 1 :]:
            number, _, cause = line.partition(": ")
            if not number.isdigit():
                break
            causes.append(cause)
    if not causes:
        return message
    return f"{message.split('. ')[0].rstrip('.')} ({causes[-1]})"


class _Dump:
    """A faulthandler dump requested by signal; done once the file stopped growing."""

    def __init__(self, path: Path, pid: int) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.last = self.size
        self.stable = False
        os.kill(pid, DUMP_SIGNAL)

    def done(self) -> bool:
        try:
            size = self.path.stat().st_size
        except OSError:
            return True
        # The handler writes in one go, but a dump read mid-write would lose the
        # main thread (listed last): wait for one poll without growth.
        self.stable = size > self.size and size == self.last
        self.last = size
        return self.stable

    def result(self) -> Stack | None:
        if self.last <= self.size:
            return None
        return from_faulthandler(self.path.read_text(errors="replace"))


def capture(
    targets: list[Target], directory: Path, deadline: float, py_spy: str | None
) -> list[Captured]:
    """Every target's stack (or why not), returned by ``deadline`` (monotonic)."""
    directory.mkdir(parents=True, exist_ok=True)
    spies: dict[int, _Spy] = {}
    errors: dict[int, str] = {}
    for target in targets:
        if py_spy is not None:
            try:
                spies[target.pid] = _Spy(py_spy, target.pid, directory)
            except OSError as error:
                errors[target.pid] = f"py-spy: {error.strerror}"
    # Registered for the faulthandler dump, not signalled yet.
    registered = {
        target.pid: path
        for target in targets
        if (path := dump_file(directory, target.pid)).exists()
    }
    fallback_at = time.monotonic() + max(0.0, deadline - time.monotonic()) / 2
    dumps: dict[int, _Dump] = {}
    try:
        while time.monotonic() < deadline:
            for pid, path in list(registered.items()):
                spy = spies.get(pid)
                if spy is not None and not spy.done() and time.monotonic() < fallback_at:
                    continue
                del registered[pid]
                if spy is None or not spy.done() or spy.result()[0] is None:
                    with contextlib.suppress(OSError):
                        dumps[pid] = _Dump(path, pid)
            # Every job is polled (no short cut): a dump notes its size at each poll.
            jobs: list[_Spy | _Dump] = [*spies.values(), *dumps.values()]
            finished = [job.done() for job in jobs]
            if not registered and all(finished):
                break
            time.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))
    finally:
        for spy in spies.values():
            if not spy.done():
                spy.kill()
    results = []
    for target in targets:
        results.append(_result(target, spies.get(target.pid), dumps.get(target.pid), errors))
    return results


def _result(
    target: Target, spy: _Spy | None, dump: _Dump | None, errors: dict[int, str]
) -> Captured:
    reasons = []
    if spy is not None:
        stack, error = spy.result()
        if stack is not None:
            return Captured(target, stack, "py-spy")
        reasons.append(error)
    elif target.pid in errors:
        reasons.append(errors[target.pid])
    else:
        reasons.append("py-spy not installed")
    if dump is not None:
        stack = dump.result()
        if stack is not None:
            return Captured(target, stack, "faulthandler", error="; ".join(filter(None, reasons)))
        reasons.append("no faulthandler dump in time")
    return Captured(target, None, error="; ".join(reason for reason in reasons if reason))
