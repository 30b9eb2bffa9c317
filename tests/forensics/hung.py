"""A rank that hangs, for the forensics tests: ``hung.py MODE``.

It registers the faulthandler dump (when ``SKYGUARD_FORENSICS_DIR`` is set), beats
``--beats`` times, prints ``ready``, then hangs as MODE says:

* ``sleep``: in Python, ``time.sleep`` inside ``_run_epoch``;
* ``collective``: in a function named ``all_reduce``, blocked in C on a pipe read
  (what a rank waiting for a missing peer looks like);
* ``recv``: the same in a function named ``recv``: a rank waiting for one peer in a
  point-to-point receive, never joining the collective the others wait in;
* ``syscall``: in C, ``select`` on a pipe nobody writes, called through ctypes;
* ``lock``: in C, acquiring a ``threading.Lock`` it already holds;
* ``noterm``: ``time.sleep`` with SIGTERM ignored;
* ``silent``: never beats at all (and sleeps in ``_run_epoch``);
* ``beating``: keeps beating forever (the healthy rank of a job);
* ``work``: beats for 2 s, then exits 0; ``exit``: exits 0 at once.

Under ``launch.py`` (``HUNG_BARRIER`` set) every rank waits, beating, until all
ranks of its node are ready before it hangs: on a loaded machine a rank still starting up would
otherwise be caught mid-import, and the hang would not be the one the test set up.

With ``HUNG_UNDUMPABLE=1`` in its environment a rank makes itself non-dumpable
(``prctl(PR_SET_DUMPABLE, 0)``, as setuid programs and some sandboxes are): then
only a tracer holding ``CAP_SYS_PTRACE`` may attach to it or read its memory.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading
import time

from devops.skypilot import heartbeat, stackdump

#: Everything the hang needs is set up before "ready": after it, the next
#: syscall is the hang itself, so "sleeping" means "hung" to the tests.
read_end, _write_end = os.pipe()
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_DUMPABLE = 4
fds = (ctypes.c_ulong * 16)()
fds[read_end // 64] |= 1 << (read_end % 64)


def all_reduce() -> None:
    os.read(read_end, 1)


def recv() -> None:
    os.read(read_end, 1)


def blocking_select() -> None:
    libc.select(read_end + 1, ctypes.byref(fds), None, None, None)


def take_twice() -> None:
    lock = threading.Lock()
    lock.acquire()
    lock.acquire(blocking=True)


def _run_epoch(mode: str) -> None:
    if mode in ("sleep", "noterm", "silent"):
        time.sleep(3600)
    elif mode == "collective":
        all_reduce()
    elif mode == "recv":
        recv()
    elif mode == "syscall":
        blocking_select()
    elif mode == "lock":
        take_twice()
    until = time.monotonic() + 2
    while mode == "beating" or (mode == "work" and time.monotonic() < until):
        heartbeat.beat()
        time.sleep(0.02)


def _barrier(beat: bool) -> None:
    directory = os.environ.get("HUNG_BARRIER")
    if not directory:
        return
    with open(os.path.join(directory, f"ready-{os.environ['RANK']}"), "w"):
        pass
    deadline = time.monotonic() + 60
    while len(os.listdir(directory)) < int(os.environ["LOCAL_WORLD_SIZE"]):
        if time.monotonic() > deadline:
            sys.exit("hung.py: the other ranks never got ready")
        if beat:
            heartbeat.beat()
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "mode",
        choices=[
            *("sleep", "silent", "collective", "recv", "syscall", "lock", "noterm"),
            *("beating", "work", "exit"),
        ],
    )
    parser.add_argument("--beats", type=int, default=0)
    args = parser.parse_args()
    if os.environ.get("HUNG_UNDUMPABLE") == "1" and libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0):
        sys.exit(f"hung.py: prctl failed: {os.strerror(ctypes.get_errno())}")
    if args.mode == "noterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stackdump.register()
    beat = args.mode != "silent"
    for _ in range(args.beats if beat else 0):
        heartbeat.beat(force=True)
        time.sleep(0.02)
    _barrier(beat)
    print("ready", flush=True)
    _run_epoch(args.mode)
    sys.exit(0)


if __name__ == "__main__":
    main()
