"""The fault-injection matrix: the real runner against one failure at a time.

Each scenario names the fault, what the runner must decide (reason, exit code),
and what must still hold afterwards: the record on disk keeps every earlier
attempt (each state dir is seeded with one), no process is left (the
``skyguard`` fixture fails the test otherwise), the runner's memory stays
bounded, no traceback comes from skyguard's own code, and the run ends within a
generous bound (a guard against hanging, not a speed test).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from devops.skypilot.common.credentials import COORD_SECRET_VAR, GITHUB_TOKEN_VAR
from devops.skypilot.common.termination import Termination, TerminationReason
from devops.skypilot.node.cgroup import AttemptCgroup
from devops.skypilot.node.liveness import ProcessStamp
from devops.skypilot.node.state import StateDir
from tests.conftest import PYTHON, REPO, SkyguardRunner
from tests.faults.endpoint import TOKEN, Endpoint, free_port, serve
from tests.faults.output import FATAL_AFTER_FLOOD, INVALID, numbered_lines, split_output

CHILDREN = str(REPO / "tests" / "faults" / "children.py")
CLOCK_JUMP = str(REPO / "tests" / "faults" / "clock_jump.py")
#: A guard against a runner that never ends, not a speed requirement.
RUN_BOUND = 90.0
#: The runner's resident memory, in every scenario (100 MB of output included).
RSS_BOUND_MB = 200.0
SEED = Termination(
    reason=TerminationReason.SIGNALLED,
    exit_code=75,
    child_exit_code=None,
    signal=None,
    detail="seeded by the fault matrix: an earlier attempt, preempted",
    monitor="",
    attempt=1,
    started_at="2026-01-01T00:00:00+00:00",
    ended_at="2026-01-01T00:01:40+00:00",
    duration=100.0,
    node_rank=0,
    task_id="fault-matrix",
)
CORRUPT = '{"reason": "completed", "history": [ this is not JSON'
#: The read-only scenario runs the runner in a private mount namespace, where the
#: state dir is bind-mounted read-only over itself once the command is running
#: (open files keep writing; every new write under the path fails with EROFS).
READ_ONLY_WRAPPER = r"""
"$@" &
runner=$!
while [ ! -e "$FAULT_READY" ]; do sleep 0.02; done
mount --bind "$FAULT_STATE" "$FAULT_STATE" &&
  mount -o remount,bind,ro "$FAULT_STATE" || echo "mount failed" >&2
touch "$FAULT_GO"
wait "$runner"
"""
#: ``skyguard run ... 2>&1 | head -1``: the runner's stdout and stderr are one pipe whose
#: reader is gone (not merely slow) by the time ``$FAULT_GO`` exists.
#: The runner is SIGKILLed by the scenario's action; once ``$FAULT_GO`` exists a second
#: runner starts on the same state dir.
RESTART_WRAPPER = r"""
"$@" &
wait $!
while [ ! -e "$FAULT_GO" ]; do sleep 0.02; done
exec "$@"
"""
#: ``skyguard run ... >&-`` (and ``<&- 2>&-``): the runner starts with those fds closed.
CLOSED_FDS_WRAPPER = {
    "stdout-closed": 'exec "$@" >&-',
    "std-fds-closed": 'exec "$@" <&- >&- 2>&-',
}
HEAD_WRAPPER = r"""
"$@" 2>&1 | { head -1 >"$FAULT_STATE.head"; exec 0<&-; touch "$FAULT_GO"; }
exit "${PIPESTATUS[0]}"
"""


@dataclass
class Live:
    """A scenario while it runs: what its action can see and do."""

    process: subprocess.Popen[bytes]
    state_dir: Path
    tmp: Path
    ready: Path
    go: Path
    endpoint: Endpoint | None = None

    def wait_until(
        self, what: str, condition: Callable[[], bool], bound: float = RUN_BOUND
    ) -> None:
        """Poll ``condition`` while the runner lives (a guard against hanging, not a timing)."""
        deadline = time.monotonic() + bound
        while not condition():
            assert self.process.poll() is None, f"runner exited before {what}"
            assert time.monotonic() < deadline, f"never {what}"
            time.sleep(0.02)

    def stderr(self) -> str:
        return (self.tmp / "stderr").read_text(errors="replace")

    def wait_ready(self) -> int:
        """Wait until the command reached its moment; its pid."""
        deadline = time.monotonic() + RUN_BOUND
        while not self.ready.exists():
            assert self.process.poll() is None, "runner exited before the command was ready"
            assert time.monotonic() < deadline, "command never got ready"
            time.sleep(0.02)
        return int(self.ready.read_text())


@dataclass
class Finished:
    returncode: int
    stdout: Path
    stderr: str
    state_dir: Path
    tmp: Path
    peak_rss_mb: float
    elapsed: float
    endpoint: Endpoint | None = None

    #: The runner's stdout and stderr were closed early: nothing printed can be read.
    output_closed: bool = False

    @property
    def printed(self) -> dict[str, Any]:
        """The ``skyguard: termination {...}`` line: printed even when it cannot be written
        (the record on disk where the runner's own output was closed)."""
        if self.output_closed:
            return {k: v for k, v in self.on_disk.items() if k != "history"}
        match = re.search(r"^skyguard: termination (\{.*\})$", self.stderr, re.MULTILINE)
        assert match, f"no termination line in stderr:\n{self.stderr[-3000:]}"
        data: dict[str, Any] = json.loads(match.group(1))
        return data

    @property
    def on_disk(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state_dir / "termination.json").read_text())
        return data

    @property
    def log(self) -> Path:
        return self.state_dir / "logs" / f"attempt-{self.printed['attempt']}.log"


Action = Callable[[Live], None]
Check = Callable[[Finished], None]


@dataclass(frozen=True)
class Scenario:
    id: str
    command: tuple[str, ...]
    reason: str
    exit_code: int
    options: tuple[str, ...] = ()
    #: Expected ``signal`` of the record (None: not checked).
    signal: str | None = None
    #: "attempt": one earlier attempt on disk; "corrupt": a corrupt record; "": nothing.
    seed: str = "attempt"
    #: History length on disk afterwards; None when nothing can be on disk.
    history: int | None = 2
    #: "plain", "read-only" (mount namespace), "clock+N" / "clock-N" (jumped wall clock)
    #: "head-1" (the runner's stdout and stderr piped into ``head -1``), or "stdout-closed" /
    #: "std-fds-closed" (the runner started with fd 1, or fds 0-2, closed).
    launcher: str = "plain"
    action: Action | None = None
    check: Check | None = None
    #: Where the runner's stdout goes: a file, or /dev/null for floods.
    keep_stdout: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    #: A misbehaving notification endpoint the runner posts to: "down", "429", "slow".
    endpoint: str = ""
    #: A known defect this scenario exposes (strict xfail: fixing it turns the test red
    #: until the mark is removed).
    known_bug: str = ""
    #: Files written before the run, as (path under the test's tmp dir, content);
    #: ``state/...`` is inside the state dir, a path ending in ``/`` is a directory.
    files: tuple[tuple[str, str], ...] = ()
    #: Holds something alive for the whole run (given the test's tmp dir).
    around: Callable[[Path], contextlib.AbstractContextManager[None]] | None = None
    #: The state dir is a tmpfs of this size ("256k") the test mounts (root only).
    state_tmpfs: str = ""
    #: Only a cgroup of the attempt covers it: skipped where the runner cannot make one.
    needs_cgroup: bool = False


def child(*args: str) -> tuple[str, ...]:
    return (PYTHON, CHILDREN, *args)


def hb(timeout: str = "1", grace: str = "2") -> tuple[str, ...]:
    return ("--heartbeat-timeout", timeout, "--grace", grace)


# --- actions and checks ------------------------------------------------------------------


def send_to_runner(signum: signal.Signals) -> Action:
    def act(live: Live) -> None:
        live.wait_ready()
        live.process.send_signal(signum)

    return act


def after_first_beat(live: Live) -> None:
    """Let the command go on once the runner has counted a beat: a file that goes
    before the monitor saw it beat is no heartbeat file yet, however slow the machine."""
    said = live.tmp / "stderr"
    live.wait_until(
        "counted a heartbeat",
        lambda: "skyguard: first heartbeat" in said.read_text(errors="replace"),
    )
    live.go.touch()


#: The start of a command, however slow, is not what these scenarios are about.
SLOW_START = ("--startup-grace", "60")


def blocked_in_kernel(live: Live) -> None:
    """The command's main thread really is asleep in open(2) of the FIFO (the kernel's
    wait for a writer), not running Python; then its beats stop."""
    pid = live.wait_ready()
    wchan = Path(f"/proc/{pid}/wchan")
    live.wait_until("blocked in open(2)", lambda: wchan.read_text() == "wait_for_partner")
    live.go.touch()


def pids_gone(name: str) -> Check:
    def check(done: Finished) -> None:
        pids = [int(p) for p in (done.tmp / name).read_text().split()]
        assert pids, "the command reported no pids"
        alive = [pid for pid in pids if psutil.pid_exists(pid) and not _zombie(pid)]
        assert not alive, f"still alive after the runner exited: {alive}"

    return check


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def fork_bomb_gone(done: Finished) -> None:
    pids_gone("pids")(done)
    assert len((done.tmp / "pids").read_text().split()) == 50


def stdout_closed_early(done: Finished) -> None:
    assert "closing stdout and stderr" in done.stdout.read_text()
    assert done.printed["child_exit_code"] == 4


def flood_fully_teed(done: Finished) -> None:
    size = done.log.stat().st_size
    assert size >= 100 * 2**20, f"log has {size} bytes, expected 100 MB"
    with done.log.open("rb") as log:
        log.seek(-64, 2)
        assert log.read().endswith(b"flood: done\n")


def invalid_bytes_kept(done: Finished) -> None:
    assert INVALID in done.log.read_bytes()
    assert "fatal log line" in done.printed["detail"]


def detail_has(text: str) -> Check:
    def check(done: Finished) -> None:
        assert text in done.printed["detail"], done.printed["detail"]

    return check


def cannot_write_record(done: Finished) -> None:
    assert "skyguard: could not write" in done.stderr, done.stderr[-2000:]


def read_only_record_untouched(done: Finished) -> None:
    cannot_write_record(done)
    assert "Read-only file system" in done.stderr
    assert done.on_disk["detail"] == SEED.detail  # the old record, intact


def state_path_left_alone(done: Finished) -> None:
    cannot_write_record(done)
    assert done.state_dir.read_text() == "not a directory\n"


def corrupt_set_aside(done: Finished) -> None:
    assert (done.state_dir / "termination.json.corrupt").read_text() == CORRUPT
    assert "is corrupt" in done.stderr


def clock_jumped(done: Finished) -> None:
    match = re.search(r"clock-jump: (\d+) wall-clock reads after the jump", done.stderr)
    assert match and int(match.group(1)) > 0, "the jumped clock was never read"


def beat_for_3s(done: Finished) -> None:
    assert "beat-for: beat for 3s" in done.stdout.read_text()
    assert done.printed["duration"] >= 3.0


def clock_jumped_and(other: Check) -> Check:
    def check(done: Finished) -> None:
        clock_jumped(done)
        other(done)

    return check


def notification_failed(done: Finished) -> None:
    assert re.search(r"notification .*discord: failed", done.stderr), done.stderr[-2000:]


def rate_limit_honoured(done: Finished) -> None:
    assert done.endpoint is not None
    assert 429 in done.endpoint.answered and done.endpoint.answered[-1] == 200
    first, second = done.endpoint.posts[0][0], done.endpoint.posts[1][0]
    assert second - first >= 0.2, "retried before the retry_after Discord asked for"
    assert re.search(r"notification .*discord: sent", done.stderr), done.stderr[-2000:]


def slow_endpoint_bounded(done: Finished) -> None:
    notification_failed(done)
    # Three tries of a 10 s read timeout would take 30 s; the deadline is 2 s per phase.
    assert done.elapsed < 20, f"runner took {done.elapsed:.1f}s with a stalled endpoint"


# --- output, log disk, closed stdout, credentials (issue 13: faults 1, 7, 14, 15) ------------

#: The user's own credential (stays) and skyguard's (removed from the command's env).
USER_KEY = "wandb-user-key-the-training-code-needs"
SKYGUARD_SECRETS = {
    COORD_SECRET_VAR: "faultmatrix-coordination-secret",
    GITHUB_TOKEN_VAR: "faultmatrix-github-token",
}


def credentials_kept_from_command(done: Finished) -> None:
    for text in (done.stdout.read_text(), done.log.read_text()):
        assert f"WANDB_API_KEY={USER_KEY}\n" in text, "the user's own credential was removed"
        assert "SKYGUARD_HEARTBEAT_FILE=" in text, "no env dump"
        for secret in (TOKEN, *SKYGUARD_SECRETS.values()):
            assert secret not in text, "one of skyguard's credentials reached the command"


def log_incomplete_output_complete(done: Finished) -> None:
    forwarded = done.stdout.read_bytes()
    assert forwarded == numbered_lines(12000) + b"fill-log-disk: done\n", "output was lost"
    assert forwarded.startswith(done.log.read_bytes()), "the log holds bytes not printed"
    said = re.findall(r"^skyguard: attempt log incomplete", done.stderr, re.MULTILINE)
    assert len(said) == 1, done.stderr[-3000:]
    for record in (done.printed, done.on_disk):
        assert "attempt log incomplete" in record["detail"], record["detail"]


def chatty_job_streamed(done: Finished) -> None:
    # The runner grows the command's pipes and reads them a MiB at a time.
    assert int((done.tmp / "pipe").read_text()) >= 2**20
    assert "illegal memory access" in done.printed["detail"]
    with done.log.open("rb") as log:
        log.seek(64 * 10000 * 100)
        assert log.read() == FATAL_AFTER_FLOOD, "the log is not every byte, in order"


def split_fatal_line_found(done: Finished) -> None:
    """Found although no read held it whole, and every byte is in the log and on our
    stdout, in order."""
    assert "illegal memory access" in done.printed["detail"]
    expected = split_output() + FATAL_AFTER_FLOOD
    assert done.log.read_bytes() == expected, "the log is not every byte, in order"
    assert done.stdout.read_bytes() == expected, "stdout is not every byte, in order"


def told_despite_closed_output(done: Finished) -> None:
    assert (done.state_dir.parent / "state.head").read_text().count("\n") == 1, (
        "head -1 read no line"
    )
    assert done.endpoint is not None
    ends = [body for _, body in done.endpoint.posts if "job_failed" in json.dumps(body)]
    assert ends, f"observers never told of the end: {done.endpoint.posts}"


#: What the command prints in the closed-fds scenarios, once on stdout and once on stderr.
SAID_ONCE = "said once, to a runner without a stdout"


def logged_once_despite_closed_fds(done: Finished) -> None:
    """Every line reached the log exactly once: a closed fd 1 taken over by the log file
    would have made the copy "to our stdout" write each stdout line into it a second time."""
    log = done.log.read_text()
    assert log.count(SAID_ONCE) == 2, log[-2000:]
    assert log.count("step 2 loss") == 1, log[-2000:]
    if done.endpoint is not None:
        ends = [body for _, body in done.endpoint.posts if "job_failed" in json.dumps(body)]
        assert ends, f"observers never told of the end: {done.endpoint.posts}"


# --- bad input: state files, heartbeat file, numbers, pid reuse, log text (issue 13) -------


def stderr_has(text: str) -> Check:
    def check(done: Finished) -> None:
        assert text in done.stderr, done.stderr[-3000:]

    return check


def bad_input(
    name: str, options: tuple[str, ...], said: str, files: tuple[tuple[str, str], ...] = ()
) -> Scenario:
    """The runner refuses the input before the command starts: one line, exit 2."""
    return Scenario(
        name,
        child("beat-for", "0.2"),
        "config_error",
        2,
        options,
        files=files,
        check=stderr_has(said),
    )


def _history(**changes: Any) -> str:
    """A termination.json: the seed, then its attempt 2 with ``changes`` (a wrong shape)."""
    second = {**SEED.to_json(), "attempt": 2, **changes}
    return json.dumps({**second, "history": [SEED.to_json(), second]})


def _checkpoint(**changes: Any) -> str:
    """An attempt.json of attempt 2; a ``raw`` pid goes in as written (``1e400``)."""
    raw = changes.pop("raw_pid", None)
    base = {"attempt": 2, "started_at": "s", "elapsed": 5.0, "checkpointed_at": "c", **changes}
    text = json.dumps(base)
    return text if raw is None else text[:-1] + f', "pid": {raw}}}'


def set_aside(name: str, *lost: int) -> Check:
    """``name`` moved aside byte for byte and reported in one line; ``lost`` attempts
    are in the history as ``record_lost`` (they spent the retry budget)."""

    def check(done: Finished) -> None:
        aside = done.state_dir / f"{name}.corrupt"
        assert aside.exists(), sorted(p.name for p in done.state_dir.iterdir())
        reports = [line for line in done.stderr.splitlines() if f"{name} is corrupt" in line]
        assert len(reports) == 1, done.stderr[-3000:]
        history = done.on_disk["history"]
        assert [h["attempt"] for h in history] == list(range(1, len(history) + 1))
        assert [h["attempt"] for h in history if h["reason"] == "record_lost"] == list(lost)

    return check


@contextlib.contextmanager
def skyguard_lookalike(tmp_path: Path, *, stamped: bool) -> Iterator[None]:
    """A live process with "skyguard" in its command line holds the pid a leftover
    attempt.json names: the pid was reused, its runner is long gone."""
    decoy = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(120)", "skyguard", "run"])
    try:
        stamp = ProcessStamp.of(decoy.pid)
        assert stamp is not None
        owner = {"host": stamp.host, "pid": decoy.pid}
        if stamped:  # the dead runner started at another time than the decoy
            owner.update(boot_id=stamp.boot_id, start_ticks=max(1, stamp.start_ticks - 500))
        (tmp_path / "state" / "attempt.json").write_text(_checkpoint(**owner))
        yield
    finally:
        decoy.kill()
        decoy.wait()


#: A batch-size finder's caught out-of-memory error, as torch prints it.
RECOVERED_OOM = """Traceback (most recent call last):
  File "train.py", line 88, in find_batch_size
    loss = model(batch).sum()
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total \
capacity of 79.15 GiB of which 1.25 GiB is free.
batch size 512 does not fit; trying 256"""
GPU_LOST = (
    "Unable to determine the device handle for GPU 0000:02:00.0: GPU is lost. "
    "Reboot the system to recover this GPU"
)
IB_COMPLETION_ERROR = (
    "node-1:3468:3905 [4] ib_plugin.c:1615 NCCL WARN NET/IB : Got completion from peer "
    "10.0.0.2<54862> with status=12 opcode=0 len=0 vendor err 129 (Recv)"
)


def no_beat_temp_files_left(done: Finished) -> None:
    assert "beat-into-full-disk: 200 failed writes" in done.stdout.read_text()
    left = [path.name for path in done.state_dir.iterdir() if path.name.startswith(".beat.")]
    assert not left, f"{len(left)} heartbeat temp files left behind"


# --- issue 13, faults 2, 8: the first end wins; signals are handled from main's first line


def late_signal_logged(name: str) -> Check:
    def check(done: Finished) -> None:
        late = f"skyguard: {name} came after the attempt had ended"
        assert late in done.stderr, done.stderr[-3000:]
        # The runner stops each process with one SIGTERM: a second is "force quit" to many.
        assert (done.tmp / "ready.sigterms").read_text() == "T"

    return check


#: Without the hurry the ending would wait for a stalled endpoint for 30 s or more.
SLOW_ENDING = {"SKYGUARD_NOTIFY_DEADLINE": "60s", "SKYGUARD_NOTIFY_READ_TIMEOUT": "60s"}
#: Node 0 of two whose other node never comes: the head lingers for it after its end.
HEAD_OF_TWO = {
    "SKYPILOT_NODE_RANK": "0",
    "SKYPILOT_NUM_NODES": "2",
    "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.1",
    "SKYPILOT_TASK_ID": "fault-matrix-head",
    "SKYGUARD_COORD_PORT": "{port}",
}
ENDING_BOUND = 25.0


def ending_hurried(name: str, cut_short: bool = True) -> Check:
    """The signal during the ending kept the code (and cut the wait short, unless what
    it waited for may end on its own within the hurry: the 5 s coordination linger)."""

    def check(done: Finished) -> None:
        code = done.printed["exit_code"]
        assert f"skyguard: {name} during the ending; exit code {code} stands" in done.stderr, (
            done.stderr[-3000:]
        )
        if cut_short:
            assert "not waiting for them longer" in done.stderr
            assert done.elapsed < ENDING_BOUND, f"the wait was not cut short: {done.elapsed:.1f}s"

    return check


def in_the_ending(live: Live) -> None:
    """The runner has printed its decision: it is telling its observers now."""
    live.wait_until("printed its end", lambda: "skyguard: termination" in live.stderr())
    endpoint = live.endpoint
    if endpoint is not None:
        live.wait_until("posted the end", lambda: bool(endpoint.posts))


def signal_in_the_ending(signum: signal.Signals, first: bool = False) -> Action:
    def act(live: Live) -> None:
        if first:
            send_to_runner(signum)(live)
        in_the_ending(live)
        live.process.send_signal(signum)

    return act


@contextlib.contextmanager
def config_fifo(tmp: Path) -> Iterator[None]:
    os.mkfifo(tmp / "config.toml")
    yield


def signal_during_startup(signum: signal.Signals) -> Action:
    """Signal the runner while its main reads the config file: a FIFO held open by us."""

    def act(live: Live) -> None:
        fifo = live.tmp / "config.toml"
        opened: list[int] = []

        def reader_is_there() -> bool:
            with contextlib.suppress(OSError):  # ENXIO: nobody reads it yet
                opened.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            return bool(opened)

        live.wait_until("opened its config file", reader_is_there)
        try:
            live.process.send_signal(signum)
        finally:
            os.close(opened[0])  # an empty config: start-up goes on, with the signal pending

    return act


def never_started(done: Finished) -> None:
    assert not done.log.exists(), "the command was started"
    assert "runner received" in done.printed["detail"]


# --- issue 13, fault 11: a signal during the NCCL preflight starts nothing


def signal_during_preflight(signum: signal.Signals) -> Action:
    def act(live: Live) -> None:
        def rank_running() -> bool:
            with contextlib.suppress(psutil.Error):
                for below in psutil.Process(live.process.pid).children(recursive=True):
                    if "nccl-check" in below.cmdline():
                        return True
            return False

        live.wait_until("started a preflight rank", rank_running)
        live.process.send_signal(signum)

    return act


# --- issue 13, fault 4: a pid-hopping descendant does not escape


def hopper_gone(done: Finished) -> None:
    """No generation of the hopper is left: its trail stops growing."""
    trail = done.tmp / "trail"
    before = trail.stat().st_size
    assert before > 0, "the hopper never ran"
    time.sleep(1.0)  # 500 hops' worth: a live hopper would have written here
    assert trail.stat().st_size == before, "a pid-hopping descendant outlived the runner"


# --- issue 13, fault 3: nothing outlives the runner; USR1/USR2 forwarded, other signals stop


def checkpoint_taken(done: Finished) -> None:
    assert "checkpoint-on-usr1: got SIGUSR1" in done.stdout.read_text()
    assert "forwarded SIGUSR1 to the command" in done.stderr


def _watchdog(live: Live) -> list[psutil.Process]:
    """The attempt's watchdog: its command line names the token attempt.json holds."""
    token = json.loads((live.state_dir / "attempt.json").read_text()).get("command_token")
    if not token:
        return []
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            command = process.cmdline()
            if "devops.skypilot.node.watchdog" in command and token in command:
                found.append(process)
    assert len(found) == 1, f"one watchdog per attempt, found {found}"
    return found


def _checkpointed(live: Live, name: str) -> bool:
    """attempt.json exists and names ``name`` (the runner writes it whole, by rename)."""
    with contextlib.suppress(FileNotFoundError):
        return bool(json.loads((live.state_dir / "attempt.json").read_text()).get(name))
    return False


def sigkill_runner(watchdog_too: bool) -> Action:
    """SIGKILL the runner (and its watchdog) mid-attempt. With the watchdog alive, wait
    until the whole tree is gone, then let the second runner start."""

    def act(live: Live) -> None:
        live.wait_ready()
        live.wait_until("checkpointed the command", lambda: _checkpointed(live, "command_pid"))
        wrapper = psutil.Process(live.process.pid)
        (runner,) = [child for child in wrapper.children() if "devops.skypilot" in child.cmdline()]
        watchdog = _watchdog(live)
        runner.kill()
        if watchdog_too:
            for process in watchdog:
                process.kill()
        else:
            pids = [int(pid) for pid in (live.tmp / "tree").read_text().split()]

            def tree_gone() -> bool:
                return not any(psutil.pid_exists(pid) and not _zombie(pid) for pid in pids)

            # "A few seconds": the grace (1 s) and a generous margin for a loaded machine.
            live.wait_until("stopped the orphaned tree", tree_gone, bound=30.0)
            live.wait_until("ended its watchdog", lambda: not any(p.is_running() for p in watchdog))
        live.go.touch()

    return act


def _watchdogs() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if "devops.skypilot.node.watchdog" in process.cmdline():
                found.append(process)
    return found


def preflight_ranks_die_with_the_runner(live: Live) -> None:
    """SIGKILL the runner while its preflight ranks run: they die with it (parent-death
    signal) before writing a result, and carry the attempt's token for the watchdog."""
    wrapper = psutil.Process(live.process.pid)

    def ranks() -> list[psutil.Process]:
        found = []
        with contextlib.suppress(psutil.Error):
            for below in wrapper.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "nccl-check" in below.cmdline():
                        found.append(below)
        return found

    live.wait_until("started both preflight ranks", lambda: len(ranks()) == 2)
    started = ranks()
    tokens = {rank.environ().get("SKYGUARD_ATTEMPT_TOKEN") for rank in started}
    (token,) = tokens
    assert token, "the preflight ranks do not carry the attempt's token"
    assert any(token in process.cmdline() for process in _watchdogs()), "no watchdog for it"
    (runner,) = [child for child in wrapper.children() if "devops.skypilot" in child.cmdline()]
    runner.kill()

    def ranks_gone() -> bool:
        return not any(psutil.pid_exists(rank.pid) and not _zombie(rank.pid) for rank in started)

    live.wait_until("stopped the preflight ranks", ranks_gone, bound=30.0)
    assert not (live.state_dir / "nccl-preflight.json").exists(), "a rank ran on to its end"
    live.go.touch()


def preflight_attempt_counted(done: Finished) -> None:
    """The attempt killed in its preflight is in the history, abandoned."""
    killed = done.on_disk["history"][1]
    assert (killed["attempt"], killed["reason"]) == (2, "signalled"), killed
    assert "before its command started" in killed["detail"], killed
    assert "attempt 2 left no record; counting it" in done.stderr, done.stderr[-3000:]


def cgroup_writable() -> bool:
    """Whether the runner can make a cgroup for its attempt here."""
    probe = AttemptCgroup.create(secrets.token_hex(16))
    if probe is None:
        return False
    probe.remove()
    return os.access(probe.path.parent / "cgroup.procs", os.W_OK)


@contextlib.contextmanager
def kill_escaped(tmp: Path) -> Iterator[None]:
    """Whatever ``leave-tree`` started with an empty environment and is still alive at
    the end is killed (it carries no leak tag): found by the pid file in its command line."""
    try:
        yield
    finally:
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if str(tmp / "tree") in process.cmdline():
                    process.kill()


def tree_gone_at_restart(message: str) -> Check:
    def check(done: Finished) -> None:
        assert (done.tmp / "tree.at-restart").read_text() == "", "the old tree was alive"
        assert message in done.stderr, done.stderr[-3000:]
        pids_gone("tree")(done)

    return check


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("child-crash", child("crash"), "job_failed", 1),
    Scenario("child-sigkill", child("kill-self", "SIGKILL"), "job_failed", 137, signal="SIGKILL"),
    Scenario("child-sigsegv", child("kill-self", "SIGSEGV"), "job_failed", 139, signal="SIGSEGV"),
    Scenario("child-hang", child("hang"), "heartbeat_timeout", 75, hb(), signal="SIGTERM"),
    Scenario(
        "child-hang-in-syscall",
        child("hang-on-fifo", "{tmp}/fifo"),
        "heartbeat_timeout",
        75,
        (*hb(), *SLOW_START),
        signal="SIGTERM",
        action=blocked_in_kernel,
    ),
    Scenario(
        "child-ignores-sigterm",
        child("hang", "ignore"),
        "heartbeat_timeout",
        75,
        # SIGTERM is ignored before the first beat: a slow start must not be the hang.
        (*hb(grace="0.5"), *SLOW_START),
        signal="SIGKILL",
    ),
    Scenario(
        "child-fork-bomb-50",
        child("fork-bomb", "50", "{tmp}/pids"),
        "completed",
        0,
        ("--grace", "1"),
        check=fork_bomb_gone,
    ),
    Scenario(
        "child-double-fork-orphan",
        child("double-fork", "{tmp}/daemon"),
        "completed",
        0,
        ("--grace", "1"),
        check=pids_gone("daemon"),
    ),
    Scenario(
        "child-closes-stdout",
        child("close-stdout", "4"),
        "job_failed",
        4,
        check=stdout_closed_early,
    ),
    Scenario(
        "child-floods-100mb",
        child("flood", "100"),
        "completed",
        0,
        check=flood_fully_teed,
        keep_stdout=False,
    ),
    Scenario(
        "child-invalid-utf8",
        child("invalid-utf8"),
        "cuda_error",
        75,
        check=invalid_bytes_kept,
    ),
    *(
        Scenario(
            f"runner-{signum.name.lower()}",
            child("beat-forever"),
            "signalled",
            75,
            hb("5"),
            signal="SIGTERM",
            action=send_to_runner(signum),
            check=detail_has(f"runner received {signum.name}"),
        )
        # SIGALRM, SIGXCPU, SIGQUIT: issue 13, fault 3 (every stop signal is handled)
        for signum in (
            signal.SIGTERM,
            signal.SIGINT,
            signal.SIGHUP,
            signal.SIGALRM,
            signal.SIGXCPU,
            signal.SIGQUIT,
        )
    ),
    Scenario("state-dir-deleted", child("remove-state-dir", "3"), "job_failed", 3),
    Scenario(
        "state-dir-deleted-while-beating",
        child("remove-state-dir-while-beating"),
        "heartbeat_unreadable",
        75,
        (*hb(), *SLOW_START),
        action=after_first_beat,
    ),
    Scenario(
        "state-dir-not-a-directory",
        child("replace-state-dir-with-file", "3"),
        "job_failed",
        3,
        history=None,
        check=state_path_left_alone,
    ),
    Scenario(
        "state-dir-read-only",
        child("wait-then-exit", "3"),
        "job_failed",
        3,
        history=1,
        launcher="read-only",
        check=read_only_record_untouched,
    ),
    Scenario(
        "heartbeat-file-deleted",
        child("delete-heartbeat"),
        "heartbeat_unreadable",
        75,
        (*hb(), *SLOW_START),
        action=after_first_beat,
        check=detail_has("[errno 2]"),
    ),
    Scenario(
        "termination-json-corrupt",
        child("beat-for", "0.2"),
        "completed",
        0,
        seed="corrupt",
        history=1,
        check=corrupt_set_aside,
    ),
    Scenario(
        # Neither the 1 h runtime budget nor the 1 s heartbeat deadline may fire at
        # the jump: the command beats for 3 s, then hangs, and only that ends it.
        "clock-jumps-forward-a-day",
        child("beat-for", "3", "hang"),
        "heartbeat_timeout",
        75,
        (*hb(), "--max-runtime", "1h", *SLOW_START),
        launcher="clock+86400",
        check=clock_jumped_and(beat_for_3s),
    ),
    Scenario(
        "clock-jumps-back-a-day",
        child("hang"),
        "heartbeat_timeout",
        75,
        (*hb(), *SLOW_START),
        launcher="clock-86400",
        check=clock_jumped_and(detail_has("(timeout 1s)")),
    ),
    Scenario(
        "notify-endpoint-down",
        child("beat-for", "0.2", "exit"),
        "completed",
        0,
        endpoint="down",
        check=notification_failed,
    ),
    Scenario(
        "notify-endpoint-429",
        child("beat-for", "1.5", "exit"),
        "completed",
        0,
        endpoint="429",
        check=rate_limit_honoured,
    ),
    Scenario(
        "notify-endpoint-slow",
        child("close-stdout", "3"),
        "job_failed",
        3,
        endpoint="slow",
        check=slow_endpoint_bounded,
    ),
    # --- output, log disk, closed stdout, credentials (issue 13: faults 1, 7, 14, 15) ---
    Scenario(
        "credentials-kept-from-command",
        child("print-env"),
        "completed",
        0,
        endpoint="ok",
        extra_env={**SKYGUARD_SECRETS, "WANDB_API_KEY": USER_KEY},
        check=credentials_kept_from_command,
    ),
    Scenario(
        "runner-output-closed",
        child("print-after-go", "50", "4"),
        "job_failed",
        4,
        launcher="head-1",
        endpoint="ok",
        check=told_despite_closed_output,
    ),
    Scenario(
        # `skyguard run ... >&-`: sys.stdout was None and the copy crashed the runner.
        "runner-started-with-stdout-closed",
        child("say", SAID_ONCE, "0.2", "3", "3", SAID_ONCE),
        "job_failed",
        3,
        launcher="stdout-closed",
        check=logged_once_despite_closed_fds,
    ),
    Scenario(
        "runner-started-with-stdin-stdout-stderr-closed",
        child("say", SAID_ONCE, "0.2", "3", "3", SAID_ONCE),
        "job_failed",
        3,
        launcher="std-fds-closed",
        endpoint="ok",
        check=logged_once_despite_closed_fds,
    ),
    Scenario(
        # The state dir's disk fills up with the attempt log; the heartbeats that follow
        # must still count (the child asks the heartbeat monitor, on a made-up clock).
        "log-disk-full",
        child("fill-log-disk", "12000", "20"),
        "completed",
        0,
        state_tmpfs="256k",
        check=log_incomplete_output_complete,
    ),
    Scenario(
        # 64 MB of 100-byte lines, then a fatal line the log patterns must still see.
        "chatty-job-100-byte-lines",
        child("flood-lines", "64", "{tmp}/pipe"),
        "cuda_error",
        75,
        ("--grace", "1"),
        signal="SIGTERM",
        keep_stdout=False,
        check=chatty_job_streamed,
    ),
    Scenario(
        # The fatal line is cut between two reads, after a 3 MiB line without newlines.
        "fatal-line-split-across-reads",
        child("fatal-split-across-reads"),
        "cuda_error",
        75,
        ("--grace", "1"),
        signal="SIGTERM",
        check=split_fatal_line_found,
    ),
    # --- bad input (issue 13: faults 9, 10, 12, 13, 16) ----------------------------------
    # A NaN grace never reaches SIGKILL: the stop loop spun forever.
    bad_input(
        "config-grace-nan",
        ("--config", "{tmp}/run.toml"),
        "[run] grace: not a finite number: nan",
        files=(("run.toml", "[run]\ngrace = nan\n"),),
    ),
    bad_input(
        "config-busbw-inf",
        ("--preflight-min-busbw", "inf"),
        "--preflight-min-busbw: not a finite number",
    ),
    bad_input(
        "heartbeat-file-is-a-directory",
        ("--heartbeat-file", "{tmp}/hbdir"),
        "hbdir is a directory",
        files=(("hbdir/", ""),),
    ),
    Scenario(
        "heartbeat-writes-fail-leave-no-temp-files",
        child("beat-into-full-disk", "200"),
        "completed",
        0,
        check=no_beat_temp_files_left,
    ),
    # --- issue 13, fault 2: a signal after the end is logged, not decisive
    Scenario(
        "late-sigterm-after-exit-0",
        child("exit-leaving-helper"),
        "completed",
        0,
        ("--grace", "3"),
        action=send_to_runner(signal.SIGTERM),
        check=late_signal_logged("SIGTERM"),
    ),
    Scenario(
        "late-sigterm-after-heartbeat-timeout",
        child("hang-ready-on-sigterm"),
        "heartbeat_timeout",
        75,
        hb(grace="3"),
        signal="SIGKILL",
        action=send_to_runner(signal.SIGTERM),
        check=late_signal_logged("SIGTERM"),
    ),
    Scenario(
        # The seeded attempt used 100 s of the 102 s budget.
        "late-sigterm-after-max-runtime",
        child("hang-ready-on-sigterm"),
        "max_runtime_reached",
        124,
        ("--max-runtime", "102", "--grace", "3"),
        signal="SIGKILL",
        action=send_to_runner(signal.SIGTERM),
        check=late_signal_logged("SIGTERM"),
    ),
    # --- issue 13, fault 8: handlers from main's first line to its last
    *(
        Scenario(
            f"ending-{signum.name.lower()}-during-notification",
            child("close-stdout", "3"),
            "job_failed",
            3,
            endpoint="slow",
            extra_env=SLOW_ENDING,
            action=signal_in_the_ending(signum),
            check=ending_hurried(signum.name),
        )
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    ),
    Scenario(
        "ending-second-sigterm",
        child("beat-forever"),
        "signalled",
        75,
        hb("5"),
        signal="SIGTERM",
        endpoint="slow",
        extra_env=SLOW_ENDING,
        action=signal_in_the_ending(signal.SIGTERM, first=True),
        check=ending_hurried("SIGTERM"),
    ),
    Scenario(
        "ending-sigterm-during-coordination-linger",
        child("beat-for", "0.2"),
        "completed",
        0,
        extra_env=HEAD_OF_TWO,
        action=signal_in_the_ending(signal.SIGTERM),
        check=ending_hurried("SIGTERM", cut_short=False),
    ),
    Scenario(
        "startup-sigterm",
        child("beat-forever"),
        "signalled",
        75,
        ("--config", "{tmp}/config.toml"),
        around=config_fifo,
        action=signal_during_startup(signal.SIGTERM),
        check=never_started,
    ),
    # --- issue 13, fault 3: nothing outlives the runner; USR1/USR2 forwarded (the other
    # stop signals are the runner-sig* scenarios above)
    Scenario(
        "runner-sigusr1-forwarded",
        child("checkpoint-on-usr1"),
        "completed",
        0,
        hb("5"),
        action=send_to_runner(signal.SIGUSR1),
        check=checkpoint_taken,
    ),
    *(
        Scenario(
            name,
            child("leave-tree", "{tmp}/tree", *cleared),
            "completed",
            0,
            ("--grace", "1"),
            history=3,
            launcher="sigkill-restart",
            action=sigkill_runner(watchdog_too=watchdog_too),
            check=tree_gone_at_restart(said),
            around=kill_escaped,
            needs_cgroup=cleared == ("escaped",),
        )
        # A process of the command that cleared its environment (env -i) holds no
        # token: the watchdog, or the next runner, finds it by the command's session;
        # one that also left the session (setsid env -i) only by the attempt's cgroup.
        for cleared, suffix in (
            ((), ""),
            (("cleared",), "-env-cleared"),
            (("escaped",), "-setsid-env-cleared"),
        )
        for name, watchdog_too, said in (
            # The kernel kills the command with the runner, the watchdog the rest of the tree.
            (f"runner-sigkilled-tree-follows{suffix}", False, "the runner died; stopped"),
            # Without the watchdog, the next runner stops the tree before it starts.
            (
                f"runner-and-watchdog-sigkilled-next-start-stops-tree{suffix}",
                True,
                "left running by attempt 2",
            ),
        )
    ),
    Scenario(
        # NCCL preflight ranks ran on to their own --preflight-timeout.
        "runner-sigkilled-during-preflight-ranks-follow",
        child("beat-for", "0.2"),
        "completed",
        0,
        ("--preflight", "--grace", "1"),
        history=3,  # the attempt killed in its preflight counts (checkpointed before it)
        launcher="sigkill-restart",
        extra_env={"SKYPILOT_NUM_GPUS_PER_NODE": "2"},
        action=preflight_ranks_die_with_the_runner,
        check=preflight_attempt_counted,
    ),
    # --- issue 13, fault 4: a pid-hopping descendant does not escape
    *(
        Scenario(
            name,
            child("pid-hopper", "{tmp}/trail", *sessions),
            "completed",
            0,
            ("--grace", "1"),
            check=hopper_gone,
        )
        for name, sessions in (
            ("child-pid-hopper", ()),
            ("child-pid-hopper-own-sessions", ("own-session",)),
        )
    ),
    # --- issue 13, fault 11: a signal during the NCCL preflight starts nothing
    Scenario(
        "preflight-passing-sigterm",
        child("beat-forever"),
        "signalled",
        75,
        ("--preflight",),
        action=signal_during_preflight(signal.SIGTERM),
        check=never_started,
    ),
    Scenario(
        # Two ranks and an impossible bus bandwidth floor: the preflight fails.
        "preflight-failing-sigterm",
        child("beat-forever"),
        "signalled",
        75,
        ("--preflight", "--preflight-min-busbw", "1e6"),
        extra_env={"SKYPILOT_NUM_GPUS_PER_NODE": "2"},
        action=signal_during_preflight(signal.SIGTERM),
        check=never_started,
    ),
    *(
        Scenario(
            f"state-{name}",
            child("beat-for", "0.2"),
            "completed",
            0,
            seed="",
            history=1,
            files=(("state/termination.json", content),),
            check=set_aside("termination.json"),
        )
        for name, content in (
            ("history-not-a-list", '{"history": "oops"}'),
            ("history-null-entry", '{"history": [null]}'),
            ("history-number-entry", '{"history": [1]}'),
        )
    ),
    *(
        Scenario(
            f"state-{name}",
            child("beat-for", "0.2"),
            "completed",
            0,
            history=3,
            files=(("state/termination.json", content),),
            check=set_aside("termination.json", 2),
        )
        for name, content in (
            ("duration-a-string", _history(duration="5")),
            ("duration-null", _history(duration=None)),
        )
    ),
    Scenario(
        "state-checkpoint-pid-1e400",
        child("beat-for", "0.2"),
        "completed",
        0,
        history=3,
        files=(("state/attempt.json", _checkpoint(raw_pid="1e400")),),
        check=set_aside("attempt.json", 2),
    ),
    Scenario(
        # Corrupted before every attempt, the history would restart at 1 each time and
        # a hang would be retried forever: the attempts its logs show spent the budget.
        "state-corrupt-again-is-no-fresh-budget",
        child("hang"),
        "crash_loop",
        125,
        (*hb(), "--max-retries", "3", "--crash-loop-window", "0"),
        seed="",
        history=4,
        files=(
            ("state/termination.json", CORRUPT),
            *((f"state/logs/attempt-{n}.log", "") for n in (1, 2, 3)),
        ),
        check=detail_has("retry budget spent: 3 retryable ends"),
    ),
    Scenario(
        "log-xid-health-summary-is-not-fatal",
        child("say", "gpu health: 0 Xid errors in the last 24h, ECC ok"),
        "completed",
        0,
    ),
    Scenario("log-recovered-oom-is-not-fatal", child("say", RECOVERED_OOM), "completed", 0),
    Scenario(
        # The caught OOM is 1,200 lines before an unrelated failure: it does not explain it.
        "log-recovered-oom-explains-no-later-crash",
        child("say", RECOVERED_OOM, "0.2", "3", "1200"),
        "job_failed",
        3,
    ),
    Scenario(
        # Seed 3 holds "Xid" between non-word bytes twice: the old bare-word pattern's bait.
        "log-random-bytes-20mb-are-not-fatal",
        child("random-bytes", "20", "3"),
        "completed",
        0,
        keep_stdout=False,
    ),
    Scenario(
        "log-gpu-lost-stops-the-job",
        child("say", GPU_LOST, "10"),
        "cuda_error",
        75,
        signal="SIGTERM",
        check=detail_has("GPU is lost"),
    ),
    Scenario(
        "log-ib-completion-error-explains-a-failure",
        child("say", IB_COMPLETION_ERROR, "0.2", "1"),
        "nccl_error",
        75,
        check=detail_has("command exited 1; fatal log line: node-1:3468:3905"),
    ),
    *(
        Scenario(
            f"pid-reused-by-a-skyguard-lookalike-{kind}",
            child("beat-for", "0.2"),
            "completed",
            0,
            history=3,
            around=functools.partial(skyguard_lookalike, stamped=kind == "stamped"),
            check=stderr_has("attempt 2 left no record; counting it"),
        )
        for kind in ("stamped", "unstamped")
    ),
)

#: What the runner's notifications are set to when a scenario has an endpoint.
NOTIFY_ENV = {
    "SKYGUARD_NOTIFY_CHANNELS": "discord",
    "SKYGUARD_NOTIFY_DEADLINE": "2s",
    "SKYGUARD_NOTIFY_TRIES": "3",
    "SKYGUARD_NOTIFY_CONNECT_TIMEOUT": "1s",
    "SKYGUARD_NOTIFY_READ_TIMEOUT": "10s",
}


# --- the one test ---------------------------------------------------------------------------


def _launch(
    skyguard: SkyguardRunner, scenario: Scenario, runner_args: list[str], env: dict[str, str]
) -> list[str]:
    if scenario.launcher == "plain":
        return skyguard.argv(runner_args)
    if scenario.launcher == "read-only":
        wrapper = ["unshare", "-m", "--propagation", "private", "sh", "-c", READ_ONLY_WRAPPER]
        return [*wrapper, "sh", *skyguard.argv(runner_args)]
    if scenario.launcher in CLOSED_FDS_WRAPPER:
        wrapper = ["sh", "-c", CLOSED_FDS_WRAPPER[scenario.launcher]]
        return [*wrapper, "sh", *skyguard.argv(runner_args)]
    if scenario.launcher == "head-1":
        return ["bash", "-c", HEAD_WRAPPER, "bash", *skyguard.argv(runner_args)]
    if scenario.launcher == "sigkill-restart":
        return ["sh", "-c", RESTART_WRAPPER, "sh", *skyguard.argv(runner_args)]
    if scenario.launcher.startswith("clock"):
        env["CLOCK_JUMP"] = scenario.launcher.removeprefix("clock")
        return [PYTHON, CLOCK_JUMP, *runner_args]
    raise AssertionError(f"unknown launcher {scenario.launcher}")


def _runner_process(process: subprocess.Popen[bytes], scenario: Scenario) -> psutil.Process | None:
    """The runner itself (below the wrapper shell in the read-only, head-1 and
    sigkill-restart scenarios, until the wrapper becomes the second runner)."""
    try:
        top = psutil.Process(process.pid)
        wrappers = ("read-only", "head-1", "sigkill-restart")
        if scenario.launcher not in wrappers or "devops.skypilot" in top.cmdline():
            return top
        for candidate in top.children():
            if "devops.skypilot" in candidate.cmdline():
                return candidate
    except psutil.Error:
        pass
    return None


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[None]:
    """A small tmpfs at ``path`` for the run: a disk that fills up (root only)."""
    path.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "skyguard-fault", str(path)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"needs root to mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def _seed(state_dir: Path, how: str) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    if how == "attempt":
        StateDir(state_dir).record(SEED, [])
    elif how == "corrupt":
        (state_dir / "termination.json").write_text(CORRUPT)


def _write_files(tmp_path: Path, files: tuple[tuple[str, str], ...]) -> None:
    for name, content in files:
        path = tmp_path / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)


def _can_remount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "none", "/mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


def _params() -> list[Any]:
    return [
        pytest.param(
            scenario,
            id=scenario.id,
            marks=[pytest.mark.xfail(strict=True, reason=scenario.known_bug)]
            if scenario.known_bug
            else [],
        )
        for scenario in SCENARIOS
    ]


@pytest.mark.parametrize("scenario", _params())
def test_scenario(scenario: Scenario, skyguard: SkyguardRunner, tmp_path: Path) -> None:
    if scenario.launcher == "read-only" and not _can_remount():
        pytest.skip("needs a private mount namespace (unshare -m as root) for a read-only mount")
    if scenario.needs_cgroup and not cgroup_writable():
        pytest.skip("needs a writable cgroup v2 tree (a cgroup per attempt)")
    with contextlib.ExitStack() as stack:
        if scenario.state_tmpfs:
            stack.enter_context(_tmpfs(tmp_path / "state", scenario.state_tmpfs))
        endpoint = stack.enter_context(serve(scenario.endpoint)) if scenario.endpoint else None
        _seed(tmp_path / "state", scenario.seed)
        _write_files(tmp_path, scenario.files)
        if scenario.around is not None:
            stack.enter_context(scenario.around(tmp_path))
        done = _run(scenario, skyguard, tmp_path, endpoint)
        _verify(scenario, done)  # before the tmpfs goes: the checks read the log


def _run(
    scenario: Scenario, skyguard: SkyguardRunner, tmp_path: Path, endpoint: Endpoint | None
) -> Finished:
    state_dir = tmp_path / "state"
    ready, go = tmp_path / "ready", tmp_path / "go"
    env = {"FAULT_READY": str(ready), "FAULT_GO": str(go), "FAULT_STATE": str(state_dir)}
    if endpoint is not None:
        env.update(NOTIFY_ENV, SKYGUARD_DISCORD_WEBHOOK_URL=endpoint.url)
    port = str(free_port())

    def fill(text: str) -> str:
        return text.replace("{tmp}", str(tmp_path)).replace("{port}", port)

    env.update({name: fill(value) for name, value in scenario.extra_env.items()})
    command = [fill(part) for part in scenario.command]
    options = [fill(part) for part in scenario.options]
    runner_args = ["--state-dir", str(state_dir), *options, "--", *command]
    argv = _launch(skyguard, scenario, runner_args, env)
    stdout_path = tmp_path / "stdout" if scenario.keep_stdout else Path("/dev/null")
    stderr_path = tmp_path / "stderr"
    started = time.monotonic()
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            argv, env=skyguard.env(env), stdout=stdout, stderr=stderr, cwd=REPO
        )
    peak_rss = 0.0
    try:
        if scenario.action is not None:
            scenario.action(Live(process, state_dir, tmp_path, ready, go, endpoint))
        deadline = time.monotonic() + RUN_BOUND
        while process.poll() is None:
            assert time.monotonic() < deadline, f"runner still running after {RUN_BOUND}s"
            runner = _runner_process(process, scenario)
            if runner is not None:
                with contextlib.suppress(psutil.Error):
                    peak_rss = max(peak_rss, runner.memory_info().rss / 2**20)
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    return Finished(
        process.returncode,
        stdout_path,
        stderr_path.read_text(errors="replace"),
        state_dir,
        tmp_path,
        peak_rss,
        time.monotonic() - started,
        endpoint,
        output_closed=scenario.launcher in ("head-1", "std-fds-closed"),
    )


def _verify_config_error(scenario: Scenario, done: Finished) -> None:
    """Bad input: one line and exit 2, nothing started, the state dir untouched."""
    assert done.returncode == scenario.exit_code == 2, done.stderr[-3000:]
    assert done.stderr.startswith("skyguard: error: "), done.stderr[-3000:]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr[-3000:]
    if scenario.seed == "attempt":
        assert done.on_disk == {**SEED.to_json(), "history": [SEED.to_json()]}
    if scenario.check is not None:
        scenario.check(done)


def _verify(scenario: Scenario, done: Finished) -> None:
    if scenario.reason == "config_error":
        _verify_config_error(scenario, done)
        return
    printed = done.printed
    assert (printed["reason"], printed["exit_code"]) == (scenario.reason, scenario.exit_code), (
        done.stderr[-3000:]
    )
    assert done.returncode == scenario.exit_code
    if scenario.signal is not None:
        assert printed["signal"] == scenario.signal
    assert not re.search(r'File "[^"]*devops/skypilot/', done.stderr), (
        f"traceback through skyguard's code:\n{done.stderr[-3000:]}"
    )
    assert TOKEN not in done.stderr, "a webhook secret reached the runner's output"
    assert 0 < done.peak_rss_mb < RSS_BOUND_MB, f"runner RSS peaked at {done.peak_rss_mb:.0f} MB"
    if scenario.history is not None:
        on_disk = done.on_disk
        assert len(on_disk["history"]) == scenario.history
        if scenario.seed == "attempt":
            assert on_disk["history"][0] == SEED.to_json()
        if scenario.history > 1 or scenario.seed != "attempt":
            expected = (scenario.reason, scenario.exit_code)
            assert (on_disk["reason"], on_disk["exit_code"]) == expected
    if scenario.check is not None:
        scenario.check(done)
