"""The heartbeat client training code calls: ``from devops.skypilot import heartbeat``.

Cheap by design: standard library only, at most one write per ``min_interval``
(default: a tenth of the runner's timeout, at most 1 s), each write an atomic
replace of a tiny file; a write that fails (full disk) leaves no temp file behind
and falls back to touching the file (creating it empty), which needs no free space.
Outside ``skyguard run`` (no ``SKYGUARD_HEARTBEAT_FILE``) every call is a no-op, so
the same script runs anywhere.

There is deliberately no background thread: a thread would keep beating while
the training loop is stuck in a collective, which is exactly the hang to catch.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from devops.skypilot import stackdump

ENV_FILE = "SKYGUARD_HEARTBEAT_FILE"
ENV_TIMEOUT = "SKYGUARD_HEARTBEAT_TIMEOUT"
#: Set by torchrun (and most launchers) in every rank.
ENV_RANK = "RANK"


def rank_file(path: Path, rank: int) -> Path:
    """Where rank ``rank`` beats: the runner watches every rank on its own."""
    return path.with_name(f"{path.name}.rank-{rank}")


def _default_path() -> Path | None:
    raw = os.environ.get(ENV_FILE)
    if not raw:
        return None
    rank = os.environ.get(ENV_RANK, "")
    # One file per rank, so a rank that stops while the others beat is seen, and named.
    return rank_file(Path(raw), int(rank)) if rank.isdigit() else Path(raw)


def _default_interval() -> float:
    try:
        timeout = float(os.environ.get(ENV_TIMEOUT, "0"))
    except ValueError:
        timeout = 0.0
    return min(1.0, timeout / 10) if math.isfinite(timeout) and timeout > 0 else 1.0


class Heartbeat:
    """Beats into one file, rate-limited. Usable as a context manager."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, min_interval: float | None = None
    ):
        self.path = Path(path) if path is not None else _default_path()
        self.min_interval = _default_interval() if min_interval is None else min_interval
        self.count = 0
        self._last = float("-inf")

    def beat(self, force: bool = False) -> bool:
        """Say "alive"; True if this call wrote the file. Never raises.

        A heartbeat that cannot be written must not crash training: the runner
        sees the missing beats and decides (heartbeat_unreadable, retried).
        """
        if self.path is None:
            return False
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return False
        self._last = now
        self.count += 1
        # Once per process: lets the runner ask for this process's stacks on a hang.
        stackdump.register()
        try:
            fd, temp = tempfile.mkstemp(prefix=".beat.", dir=self.path.parent)
        except OSError:
            return self._touch()
        try:
            try:
                os.write(fd, f"{time.time():.3f} {os.getpid()} {self.count}\n".encode())
            finally:
                os.close(fd)
            os.replace(temp, self.path)
        except BaseException as error:
            # A full disk or a directory where the file should be: at one beat a
            # second, every temp file left behind would be ~86,000 a day.
            with contextlib.suppress(OSError):
                os.unlink(temp)
            if isinstance(error, OSError):
                return self._touch()
            raise
        return True

    def _touch(self) -> bool:
        """A new mtime (or a new empty file) is a beat too, and needs no free space: a
        disk filled by the training log must not make a live job look hung."""
        assert self.path is not None
        try:
            # EISDIR: a directory is no heartbeat file.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError:
            return False
        try:
            os.utime(fd)
        except OSError:
            return False
        finally:
            os.close(fd)
        return True

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        """Beat, ignoring arguments: pass the object itself as a framework callback."""
        self.beat()

    def __enter__(self) -> Heartbeat:
        self.beat(force=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.beat(force=True)


_default: Heartbeat | None = None


def beat(force: bool = False) -> bool:
    """Module-level beat into ``$SKYGUARD_HEARTBEAT_FILE``; True if it wrote."""
    global _default
    if _default is None:
        _default = Heartbeat()
    return _default.beat(force)
