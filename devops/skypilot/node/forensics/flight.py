"""This attempt's flight-recorder dumps, analysed by PyTorch's own analyser, in one line.

When a collective times out, torch's NCCL watchdog dumps every rank's flight
recorder (the last collectives each rank issued) to ``<prefix><global rank>``; the
runner points the prefix into the state dir (``node/environment.py``). After the
tree is stopped, :func:`analyse` copies the dumps written during this attempt to
``<state-dir>/forensics/attempt-N/flight-recorder/`` and runs torch's analyser on
them in a child process (:mod:`.frtrace`: torch is imported there, only when dumps
exist), killed at the bound. The line it returns names the collective some rank
never joined, where it was issued, and the ranks that left no dump::

    flight recorder: all_reduce #4 (default_pg) at train.py:70 (_run_epoch) never joined by rank 1
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Where torch dumps, the first set wins (torch reads them in this order).
PREFIX_VARS = ("TORCH_FR_DUMP_TEMP_FILE", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE")
#: The analyser runs after the stop (it needs files, not live processes), so its bound
#: (this, or ``--forensics-timeout`` if longer) delays the record, never SIGTERM;
#: importing torch alone takes seconds on a busy host.
TIMEOUT = 15.0
#: Under the attempt's forensics directory.
SUBDIR = "flight-recorder"
_PREFIX = "rank_"
_ANALYSER = "devops.skypilot.node.forensics.frtrace"


def fresh_dumps(env: Mapping[str, str], since: float) -> dict[int, Path]:
    """Dumps (global rank -> file) written at or after wall time ``since``."""
    prefix = next((env[name] for name in PREFIX_VARS if env.get(name)), None)
    if prefix is None:
        return {}
    base = Path(prefix)
    dumps: dict[int, Path] = {}
    try:
        candidates = list(base.parent.iterdir())
    except OSError:
        return dumps
    for path in candidates:
        suffix = path.name[len(base.name) :]
        if not path.name.startswith(base.name) or not suffix.isdigit():
            continue
        try:
            if path.is_file() and path.stat().st_mtime >= since:
                dumps[int(suffix)] = path
        except OSError:
            continue
    return dumps


def analyse(env: Mapping[str, str], since: float, directory: Path, timeout: float) -> str | None:
    """The one-line analysis of this attempt's dumps; None when there are none. Never raises."""
    dumps = fresh_dumps(env, since)
    if not dumps or timeout <= 0:
        return None
    target = directory / SUBDIR
    try:
        target.mkdir(parents=True, exist_ok=True)
        for rank, path in dumps.items():
            shutil.copyfile(path, target / f"{_PREFIX}{rank}")
        with open(target / "analysis.err", "wb") as errors:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "devops.skypilot.node.forensics.frtrace",
                    str(target),
                    _PREFIX,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
                timeout=timeout,
                check=False,
            )
    except subprocess.TimeoutExpired:
        return f"flight recorder: {_count(dumps)}, analysis timed out after {timeout:g}s"
    except OSError as error:
        logger.warning("skyguard: flight recorder dumps not analysed: %s", error)
        return f"flight recorder: {_count(dumps)} in {target}, not analysed ({error.strerror})"
    try:
        result = json.loads(done.stdout.decode().strip().splitlines()[-1])
        return describe(result)
    except (ValueError, IndexError, KeyError, TypeError):
        why = _last_line(target / "analysis.err") or f"exit {done.returncode}"
        return f"flight recorder: {_count(dumps)}, analysis failed: {why}"


def describe(result: Mapping[str, Any]) -> str:
    """``{"ranks", "expected", "stuck"}`` (see :mod:`.frtrace`) as one line."""
    parts = []
    stuck = result["stuck"]
    if stuck is not None:
        group = str(stuck["group"]).split(":", 1)[-1] or "?"
        where = f" at {stuck['where']}" if stuck["where"] else ""
        what = f"{stuck['name']} #{stuck['seq']} ({group}){where}"
        if stuck["missing"]:
            parts.append(f"{what} never joined by {_ranks(stuck['missing'])}")
        else:
            parts.append(f"last collective {what}, {stuck['state']}")
    absent = sorted(set(result["expected"]) - set(result["ranks"]))
    if absent:
        parts.append(f"no dump from {_ranks(absent)}")
    return "flight recorder: " + ("; ".join(parts) or "no collective recorded")


def _ranks(ranks: list[int]) -> str:
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(str(rank) for rank in ranks)}"


def _count(dumps: Mapping[int, Path]) -> str:
    return f"{len(dumps)} dump{'s' if len(dumps) > 1 else ''}"


def _last_line(path: Path) -> str | None:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return None
    return lines[-1][:200] if lines else None
