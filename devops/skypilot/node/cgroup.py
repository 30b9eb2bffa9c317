"""A cgroup v2 per attempt, where the runner may make one: what no process can leave.

A process of the attempt can clear its environment (no token) and leave the
command's session (``setsid env -i ...``); it cannot leave its cgroup without
write access to the cgroup tree. So where the runner can create a child of its own
cgroup and move itself there (root in a VM or a container given a writable cgroup
mount, a systemd unit with ``Delegate=yes``), it does so before it starts anything:
the preflight's ranks, the command and every descendant are born inside, and
``cgroup.kill`` stops all of them at once, however they hide. The watchdog is
started before and stays outside. Once the tree is stopped the runner moves back
and removes the empty cgroup.

Elsewhere (an unprivileged user in a systemd session, a container whose cgroup
mount is read-only, cgroup v1 only) :meth:`AttemptCgroup.create` gives None and the
token and session (:mod:`devops.skypilot.node.leftovers`) are all there is. Under
Slurm's cgroup plugin the runner's cgroup is the task's (``.../step_N/user/task_0``):
as root the attempt's cgroup is made below it, so Slurm's own limits, accounting and
end-of-step kill still cover it; as a user that directory is not writable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: The attempt's cgroup is named by its token: nothing else is ever killed.
PREFIX = "skyguard-"
_TOKEN = re.compile(r"[0-9a-f]{16,64}")
MOUNTINFO = Path("/proc/self/mountinfo")
OWN_CGROUP = Path("/proc/self/cgroup")
#: How long the runner tries to empty and remove its cgroup at the end.
_CLOSE_BOUND = 2.0


def _mounts() -> list[tuple[Path, str]]:
    """Every cgroup2 mount of this mount namespace: (mount point, its root in the tree)."""
    mounts = []
    with contextlib.suppress(OSError):
        for line in MOUNTINFO.read_text().splitlines():
            before, _, after = line.partition(" - ")
            fields = before.split()
            if after.split()[:1] == ["cgroup2"] and len(fields) >= 5:
                mounts.append((Path(_unescape(fields[4])), _unescape(fields[3])))
    return mounts


def _unescape(field: str) -> str:
    """mountinfo writes a space as ``\\040``, a tab ``\\011``, a backslash ``\\134``."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def own_cgroup() -> Path | None:
    """The directory of this process's cgroup v2, where a cgroup2 mount shows it."""
    try:
        lines = OWN_CGROUP.read_text().splitlines()
    except OSError:
        return None
    own = next((line[3:] for line in lines if line.startswith("0::")), None)
    if own is None:
        return None
    for mount, root in _mounts():
        relative = os.path.relpath(own, root)
        if relative == "." or not relative.startswith(".."):
            path = mount if relative == "." else mount / relative
            if path.is_dir():
                return path
    return None


@dataclass(frozen=True)
class AttemptCgroup:
    """The cgroup of one attempt: ``<the runner's cgroup>/skyguard-<token>``."""

    path: Path

    @classmethod
    def create(cls, token: str) -> AttemptCgroup | None:
        """Make it below the runner's own cgroup; None where that is not allowed."""
        here = own_cgroup()
        if here is None or not _TOKEN.fullmatch(token):
            return None
        try:
            (here / f"{PREFIX}{token}").mkdir()
        except OSError as error:  # the usual case for an unprivileged user: not news
            logger.debug("skyguard: no cgroup for this attempt (%s)", error.strerror or error)
            return None
        return cls(here / f"{PREFIX}{token}")

    @classmethod
    def join_new(cls, token: str) -> AttemptCgroup | None:
        """Make it and move this process into it; None (and nothing left) if either fails."""
        cgroup = cls.create(token)
        if cgroup is not None and not cgroup.enter():
            cgroup.remove()
            return None
        return cgroup

    @classmethod
    def named(cls, path: str, token: str) -> AttemptCgroup | None:
        """The cgroup a checkpoint names, if it is one and is that attempt's: its name
        carries the token, it is under a cgroup2 mount, and this process is not in it."""
        if not path or not _TOKEN.fullmatch(token):
            return None
        cgroup = Path(path)
        if not cgroup.is_absolute() or cgroup.name != f"{PREFIX}{token}":
            return None
        if not any(cgroup.is_relative_to(mount) for mount, _ in _mounts()):
            return None
        here = own_cgroup()
        if here is not None and here.is_relative_to(cgroup):
            return None
        return cls(cgroup) if (cgroup / "cgroup.procs").exists() else None

    def enter(self) -> bool:
        """Move this process (every thread) into it; False if the kernel refuses."""
        return self._move_here(self.path)

    def leave(self) -> bool:
        """Move this process back to the cgroup it came from."""
        if self._move_here(self.path.parent):
            return True
        logger.warning("skyguard: could not leave the attempt's cgroup %s", self.path)
        return False

    @staticmethod
    def _move_here(cgroup: Path) -> bool:
        try:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as error:
            logger.info("skyguard: cannot move into %s (%s)", cgroup, error.strerror or error)
            return False
        return True

    def pids(self) -> list[int]:
        """The processes in it and in the cgroups below it now (none once it is gone)."""
        pids: list[int] = []
        for below, _, _ in os.walk(self.path):
            with contextlib.suppress(OSError, ValueError):
                pids.extend(int(pid) for pid in Path(below, "cgroup.procs").read_text().split())
        return pids

    def populated(self) -> bool:
        """Whether a live process is in it (``cgroup.events``: set by the kernel)."""
        try:
            events = (self.path / "cgroup.events").read_text()
        except OSError:
            return False
        return "populated 1" in events.splitlines()

    def kill(self) -> None:
        """SIGKILL every process in it at once (``cgroup.kill``, Linux 5.14); on an
        older kernel each one listed, which the caller repeats until it is empty."""
        try:
            (self.path / "cgroup.kill").write_text("1")
            return
        except FileNotFoundError:
            if not self.path.is_dir():
                return
        except OSError as error:
            logger.warning("skyguard: cgroup.kill of %s failed: %s", self.path, error)
        for pid in self.pids():
            with contextlib.suppress(OSError):  # gone since the listing
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> bool:
        """Remove it, and any cgroup made below it (a nested runner's), once empty;
        False while a process is still in it."""
        for below, _, _ in os.walk(self.path, topdown=False):
            try:
                os.rmdir(below)
            except FileNotFoundError:
                continue
            except OSError:
                return False
        return True

    def close(self) -> None:
        """Leave it and remove it. Call once the tree is stopped: anything still in it
        (moved in from outside the runner's tree) is killed first, within a bound. If
        the runner cannot leave, it stays: killing the cgroup would kill the runner."""
        if not self.leave():
            return
        deadline = time.monotonic() + _CLOSE_BOUND
        while not self.remove() and time.monotonic() < deadline:
            self.kill()
            time.sleep(0.05)
