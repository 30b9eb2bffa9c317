"""Misbehaving commands for the fault matrix, run as real processes under the runner.

``python children.py MODE ARGS...``. Modes that need the test to act at the
right moment write ``$FAULT_READY`` (a path) when they reach it; modes that wait
for the test poll for ``$FAULT_GO``.
"""

from __future__ import annotations

import fcntl
import os
import random
import resource
import shutil
import signal
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from devops.skypilot.heartbeat import Heartbeat
from devops.skypilot.node.monitors.heartbeat import HeartbeatMonitor


def ready() -> None:
    path = os.environ.get("FAULT_READY")
    if path:
        Path(path + ".tmp").write_text(str(os.getpid()))
        os.replace(path + ".tmp", path)


def wait_for_go() -> None:
    go = os.environ["FAULT_GO"]
    while not os.path.exists(go):
        time.sleep(0.02)


def beats(count: int = 3) -> Heartbeat:
    beat = Heartbeat(min_interval=0)
    for _ in range(count):
        beat.beat()
        time.sleep(0.05)
    return beat


def beats_until_go() -> Heartbeat:
    """Beat until the test says the runner has counted one (``$FAULT_GO``)."""
    beat = Heartbeat(min_interval=0)
    go = os.environ["FAULT_GO"]
    while not os.path.exists(go):
        beat.beat()
        time.sleep(0.02)
    return beat


def hang() -> None:
    while True:
        time.sleep(3600)


def crash() -> int:
    beats()
    raise RuntimeError("simulated crash")


def kill_self(name: str) -> int:
    beats()
    os.kill(os.getpid(), getattr(signal, name))
    time.sleep(5)
    return 0


def hang_after_beats(ignore_term: str = "") -> int:
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    beats()
    ready()
    hang()
    return 0


def hang_on_fifo(path: str) -> int:
    """Blocked in the kernel: open() of a FIFO waits for a writer that never comes. A
    thread beats until the test has seen the main thread asleep there (``$FAULT_GO``);
    from then on nothing beats, so the hang cannot be decided before it is in place."""
    os.mkfifo(path)
    threading.Thread(target=beats_until_go, daemon=True).start()
    ready()
    with open(path, "rb") as fifo:
        fifo.read()
    return 0


def fork_bomb(count: str, pid_file: str) -> int:
    """``count`` children that try to outlive the command: half in their own session
    (out of the process group), half ignoring SIGTERM."""
    pids = []
    for index in range(int(count)):
        pid = os.fork()
        if pid == 0:
            if index % 2:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            else:
                os.setsid()
            time.sleep(3600)
            os._exit(0)
        pids.append(pid)
    Path(pid_file).write_text("\n".join(map(str, pids)))
    return 0


def double_fork(pid_file: str) -> int:
    """Leave a SIGTERM-ignoring daemon behind in its own session, then exit 0."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            Path(pid_file + ".tmp").write_text(str(os.getpid()))
            os.replace(pid_file + ".tmp", pid_file)
            time.sleep(3600)
        os._exit(0)
    while not os.path.exists(pid_file):
        time.sleep(0.01)
    return 0


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


def remove_state_dir(code: str) -> int:
    shutil.rmtree(os.environ["SKYGUARD_STATE_DIR"])
    return int(code)


def remove_state_dir_while_beating() -> int:
    """The heartbeat file's directory vanishes (a bucket unmounted) while the loop goes on."""
    beat = beats_until_go()
    shutil.rmtree(os.environ["SKYGUARD_STATE_DIR"])
    while True:
        beat.beat()
        time.sleep(0.05)


def replace_state_dir_with_file(code: str) -> int:
    """The state dir's path stops being a directory: nothing can be written under it."""
    state = os.environ["SKYGUARD_STATE_DIR"]
    shutil.rmtree(state)
    Path(state).write_text("not a directory\n")
    return int(code)


def wait_then_exit(code: str) -> int:
    ready()
    wait_for_go()
    return int(code)


def delete_heartbeat() -> int:
    beat = beats_until_go()
    assert beat.path is not None
    beat.path.unlink()
    ready()
    hang()
    return 0


def beat_for(seconds: str, then: str = "exit") -> int:
    """Beat for ``seconds``; then exit 0, or hang (``then=hang``)."""
    beat = Heartbeat(min_interval=0)
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end:
        beat.beat()
        time.sleep(0.05)
    print(f"beat-for: beat for {seconds}s", flush=True)
    if then == "hang":
        hang()
    return 0


def beat_forever() -> int:
    beat = Heartbeat(min_interval=0)
    beat.beat()
    ready()
    while True:
        beat.beat()
        time.sleep(0.05)


def print_after_go(lines: str, code: str) -> int:
    """Print once the test says so (the runner's own stdout is closed by then), then exit."""
    ready()
    wait_for_go()
    for index in range(int(lines)):
        print(f"after go {index}", flush=True)
    return int(code)


def numbered_lines(count: int) -> bytes:
    """``count`` distinct lines of 100 bytes each."""
    return b"".join(b"line %06d %s\n" % (index, b"." * 87) for index in range(count))


def fill_log_disk(lines: str, count: str) -> int:
    """Print more than the state dir's disk holds, then beat ``count`` times into the
    full disk. The runner's heartbeat monitor must count every beat; it is asked here,
    on a made-up clock 1.5 timeouts apart, so a slow machine cannot fail the scenario
    and a missed beat always does."""
    sys.stdout.buffer.write(numbered_lines(int(lines)))
    sys.stdout.buffer.flush()
    state = os.environ["SKYGUARD_STATE_DIR"]
    bound = time.monotonic() + 60  # a guard against a log that never fills the disk
    while os.statvfs(state).f_bavail:
        if time.monotonic() > bound:
            print("fill-log-disk: the attempt log never filled the disk", file=sys.stderr)
            return 3
        time.sleep(0.01)
    beat = Heartbeat(min_interval=0)
    assert beat.path is not None
    monitor = HeartbeatMonitor(beat.path, timeout=1.0)
    monitor.start(0.0)
    for step in range(1, int(count) + 1):
        time.sleep(0.02)  # the file system's clock moves on, so each touch is a new mtime
        if not beat.beat() or beat.path.stat().st_size:  # a touch: the write found no space
            print(f"fill-log-disk: beat {step} was no touch of an empty file", file=sys.stderr)
            return 3
        verdict = monitor.check(1.5 * step)
        if verdict is not None:
            print(f"fill-log-disk: beat {step} not seen: {verdict.detail}", file=sys.stderr)
            return 3
    print("fill-log-disk: done", flush=True)
    return 0


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


def beat_into_full_disk(count: str) -> int:
    """Every heartbeat write fails as on a full disk: no file may grow past 0 bytes."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
    beat = Heartbeat(min_interval=0)
    assert beat.path is not None
    # A beat may still land as a touch (no space needed); the write itself must fail.
    failed = sum(1 for _ in range(int(count)) if not beat.beat() or beat.path.stat().st_size == 0)
    print(f"beat-into-full-disk: {failed} failed writes", flush=True)
    return 0


def _ready_on_sigterm() -> None:
    """SIGTERM only says that it arrived (``$FAULT_READY``, and one byte per SIGTERM in
    ``$FAULT_READY.sigterms``); stopping takes until SIGKILL."""
    count = os.open(os.environ["FAULT_READY"] + ".sigterms", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def noted(signum: int, frame: object) -> None:
        os.write(count, b"T")
        if os.fstat(count).st_size == 1:
            ready()

    signal.signal(signal.SIGTERM, noted)


def exit_leaving_helper() -> int:
    """Exit 0 at once, leaving a helper in the process group that is slow to stop."""
    read, write = os.pipe()
    if os.fork() == 0:
        _ready_on_sigterm()
        os.write(write, b"1")
        hang()
    os.read(read, 1)
    return 0


def hang_ready_on_sigterm() -> int:
    """Beat a little, then hang; the runner's SIGTERM is noted, never obeyed."""
    _ready_on_sigterm()
    beats()
    hang()
    return 0


def pid_hopper(trail: str, own_session: str = "") -> int:
    """Leave a descendant that forks and exits every 2 ms, so its pid never stays; then
    exit 0. Each generation appends a byte to ``trail``; all give up after 20 s, so a
    leak does not outlive the test by long. ``own_session``: each hop leaves the group."""
    give_up = time.monotonic() + 20
    if os.fork() == 0:
        fd = os.open(trail, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        while time.monotonic() < give_up:
            if os.fork():
                os._exit(0)
            if own_session:
                os.setsid()
            os.write(fd, b".")
            time.sleep(0.002)
        os._exit(0)
    while not os.path.exists(trail):
        time.sleep(0.01)
    return 0


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


def checkpoint_on_usr1() -> int:
    """Beat until SIGUSR1 says "checkpoint now", then save and exit 0 (Slurm's
    ``--signal=USR1@N`` setups)."""
    asked: list[int] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: asked.append(signum))
    beat = Heartbeat(min_interval=0)
    ready()
    while not asked:
        beat.beat()
        time.sleep(0.05)
    print("checkpoint-on-usr1: got SIGUSR1, checkpoint saved", flush=True)
    return 0


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


#: A process that cleared its environment (``env -i``): it holds no attempt token.
_CLEARED = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


def leave_tree(pid_file: str, cleared: str = "") -> int:
    """Attempt 2: a tree that ignores SIGTERM (the command, a child in its group, one
    in a session of its own as torchrun's workers, and with ``cleared`` one started
    with an empty environment: in the group, or with ``escaped`` in a session of its
    own too, as ``setsid env -i``), its pids in ``pid_file``; hang. Any later
    attempt: note which of them are alive as it starts, and exit 0."""
    if os.environ["SKYGUARD_ATTEMPT"] != "2":
        alive = [pid for pid in map(int, Path(pid_file).read_text().split()) if _alive(pid)]
        Path(pid_file + ".at-restart").write_text(" ".join(map(str, alive)))
        return 0
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pids = [os.getpid()]
    for own_session in (False, True):
        pid = os.fork()
        if pid == 0:
            if own_session:
                os.setsid()
            hang()
        pids.append(pid)
    if cleared:
        pid = os.fork()
        if pid == 0:
            if cleared == "escaped":
                os.setsid()
            # The pid file in its command line: the test finds it by that to clean up.
            os.execve(sys.executable, [sys.executable, "-c", _CLEARED, pid_file], {})
        pids.append(pid)
    Path(pid_file + ".tmp").write_text(" ".join(map(str, pids)))
    os.replace(pid_file + ".tmp", pid_file)
    ready()
    hang()
    return 0


MODES: dict[str, Callable[..., int]] = {
    "crash": crash,
    "kill-self": kill_self,
    "hang": hang_after_beats,
    "hang-on-fifo": hang_on_fifo,
    "fork-bomb": fork_bomb,
    "double-fork": double_fork,
    "close-stdout": close_stdout,
    "flood": flood,
    "invalid-utf8": invalid_utf8,
    "remove-state-dir": remove_state_dir,
    "remove-state-dir-while-beating": remove_state_dir_while_beating,
    "replace-state-dir-with-file": replace_state_dir_with_file,
    "wait-then-exit": wait_then_exit,
    "delete-heartbeat": delete_heartbeat,
    "beat-for": beat_for,
    "beat-forever": beat_forever,
    "print-after-go": print_after_go,
    "beat-into-full-disk": beat_into_full_disk,
    "exit-leaving-helper": exit_leaving_helper,
    "hang-ready-on-sigterm": hang_ready_on_sigterm,
    "pid-hopper": pid_hopper,
    "checkpoint-on-usr1": checkpoint_on_usr1,
    "leave-tree": leave_tree,
    "say": say,
    "random-bytes": random_bytes,
    "print-env": print_env,
    "flood-lines": flood_lines,
    "fatal-split-across-reads": fatal_split_across_reads,
    "fill-log-disk": fill_log_disk,
}


if __name__ == "__main__":
    mode, *arguments = sys.argv[1:]
    sys.exit(MODES[mode](*arguments))
