"""Nothing of an attempt outlives its runner by long, however the runner dies.

A runner stops its command's tree itself on every end it lives through. When it
does not live (SIGKILL, the OOM killer), three things stand in:

- the kernel SIGKILLs the command itself at once (``PR_SET_PDEATHSIG``, set in
  :mod:`devops.skypilot.node.process`);
- a watchdog (:mod:`devops.skypilot.node.watchdog`) started with every attempt
  stops every process of the attempt (SIGTERM, ``--grace``, SIGKILL) as soon as
  the runner is gone;
- the next runner on the same state dir does the same for the attempt its
  checkpoint names, before it starts anything (for a watchdog killed too).

The processes of an attempt are found two ways:

- their environment holds the attempt's random token (:data:`TOKEN_VAR`): every
  descendant inherits it, so torchrun's workers in sessions of their own and daemons
  re-parented to init are found, and no other process can hold it;
- they are in the command's session (the command is started with ``setsid``, so the
  session id is its pid) and started after it: what cleared its environment
  (``env -i``) but stayed in the session. The kernel does not give a pid to a new
  process while a session of that id has a member, so the id names our session as
  long as one of it lives; if the command's pid runs another process (its start time
  differs), the session was given up entirely and reused, and is not searched.

The command itself is also named by pid and start time
(:class:`~devops.skypilot.node.liveness.ProcessStamp`), never by pid alone.

Where the runner could make a cgroup for the attempt
(:mod:`devops.skypilot.node.cgroup`), every process in it is the attempt's too and
``cgroup.kill`` ends them; that alone finds a process that both cleared its
environment and left the session (``setsid env -i ...``). Without one, such a
process is found by neither way and runs on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence

import psutil

from devops.skypilot.node.cgroup import AttemptCgroup
from devops.skypilot.node.liveness import ProcessStamp, boot_id
from devops.skypilot.node.state import RunningAttempt

logger = logging.getLogger(__name__)

#: In the command's environment: which attempt a process belongs to.
TOKEN_VAR = "SKYGUARD_ATTEMPT_TOKEN"
#: SIGKILL rounds after the grace, for processes that keep forking.
_KILL_ROUNDS = 10.0


def new_token() -> str:
    return secrets.token_hex(16)


def find(token: str, command: ProcessStamp | None = None) -> list[psutil.Process]:
    """Every live process of the attempt: its token in the environment, the command,
    or a process of the command's session started after it."""
    session = _session(command)
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):  # gone, a zombie, or not ours to read
            if token and process.environ().get(TOKEN_VAR) == token:
                found.append(process)
                continue
        mine = command is not None and process.pid == command.pid and command.alive()
        if mine or (session is not None and _in_session(process.pid, session)):
            found.append(process)
    return found


def _session(command: ProcessStamp | None) -> ProcessStamp | None:
    """The command's session, where it can still name it: a stamp of this boot whose
    pid is free or still the command's own."""
    if command is None or command.start_ticks <= 0 or command.pid <= 1:
        return None
    if (command.host, command.boot_id) != (socket.gethostname(), boot_id()):
        return None
    now = ProcessStamp.of(command.pid)
    if now is not None and now.start_ticks != command.start_ticks:
        return None  # the pid runs something else: the session was reused
    return command


def _in_session(pid: int, session: ProcessStamp) -> bool:
    try:
        if os.getsid(pid) != session.pid:
            return False
    except OSError:  # gone
        return False
    stamp = ProcessStamp.of(pid)
    return stamp is not None and stamp.start_ticks >= session.start_ticks


def _members(cgroup: AttemptCgroup | None) -> list[psutil.Process]:
    found = []
    for pid in cgroup.pids() if cgroup is not None else ():
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(pid))
    return found


def _all(
    token: str, command: ProcessStamp | None, cgroup: AttemptCgroup | None
) -> list[psutil.Process]:
    found = {process.pid: process for process in _members(cgroup)}
    found.update((process.pid, process) for process in find(token, command))
    return list(found.values())


def stop(
    token: str,
    grace: float,
    command: ProcessStamp | None = None,
    cgroup: AttemptCgroup | None = None,
) -> int:
    """SIGTERM every process of the attempt, wait up to ``grace``, SIGKILL until none
    is left (bounded), remove its cgroup; how many there were."""
    found = _all(token, command, cgroup)
    _send(found, "terminate")
    psutil.wait_procs(found, timeout=grace)
    deadline = time.monotonic() + _KILL_ROUNDS
    while time.monotonic() < deadline:
        if cgroup is not None and cgroup.populated():
            cgroup.kill()  # all at once: one forked since the listing too
        left = find(token, command)
        if not left and not (cgroup is not None and cgroup.populated()):
            break
        _send(left, "kill")
        if waiting := [*left, *_members(cgroup)]:
            psutil.wait_procs(waiting, timeout=0.5)
        else:  # the cgroup's last ones are exiting: the kernel clears "populated" soon
            time.sleep(0.05)
    if cgroup is not None and not cgroup.remove():
        logger.warning("skyguard: could not remove %s: a process is still in it", cgroup.path)
    return len(found)


def _send(processes: Sequence[psutil.Process], how: str) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            getattr(process, how)()


def stop_abandoned(running: RunningAttempt, grace: float) -> None:
    """Stop what is left of an attempt whose runner died, if it ran on this machine."""
    if (running.host, running.boot_id) != (socket.gethostname(), boot_id()):
        return
    if not running.command_token and not running.command_pid:
        return  # written by a skyguard that did not say
    cgroup = AttemptCgroup.named(running.cgroup, running.command_token)
    count = stop(running.command_token, grace, running.command(), cgroup)
    if count:
        logger.warning(
            "skyguard: stopped %d process(es) left running by attempt %d", count, running.attempt
        )
