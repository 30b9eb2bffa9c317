"""``notify-event`` on a jobs controller without skyguard: run from the wheel the job shipped.

SkyPilot's default jobs controller is a cluster of its own (no ``consolidation_mode``),
running SkyPilot's runtime, and nothing installs skyguard there. The job's ``file_mounts``
carry the client's wheel (``skyguard launch``), and SkyPilot puts it on the controller on
its way to the nodes (``translate_local_file_mounts_to_two_hop``:
``~/.sky/tmp/controller/<run>/<n>``) or into a bucket. The recipe's ``event_callback``
finds it in the controller's record of the job, keeps a copy of its own (SkyPilot
deletes those files when the job ends, before the last callback) and runs this module
from it: a wheel is a zip, so its pure-Python packages import directly, in SkyPilot's
Python, beside SkyPilot.

Of skyguard's requirements, SkyPilot's runtime has requests and psutil but not tenacity.
What is missing is installed once into a directory of skyguard's own
(``~/.skyguard/controller/lib``), appended to ``sys.path`` so that SkyPilot's packages
always come first: SkyPilot's environment is never changed. Standard library only until
the requirements are there.
"""

from __future__ import annotations

import fcntl
import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

PREFIX = "skyguard notify-event:"
#: A pip install of a few small packages; bounded so a dead index cannot hold the callback.
PIP_TIMEOUT = 300.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def lib_dir() -> Path:
    return Path.home() / ".skyguard" / "controller" / "lib"


def requirements(wheel: Path) -> list[str]:
    """The wheel's unconditional ``Requires-Dist`` lines (extras are the nodes' business)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode("utf-8")
    return [
        line.partition(":")[2].strip()
        for line in text.splitlines()
        if line.startswith("Requires-Dist:") and ";" not in line
    ]


def missing(wanted: Sequence[str]) -> list[str]:
    """The requirements no distribution on ``sys.path`` provides (presence, not version:
    SkyPilot's own requests and psutil are new enough)."""
    absent = []
    for requirement in wanted:
        found = _NAME.match(requirement)
        if found is None:
            continue
        try:
            importlib.metadata.distribution(found.group(0))
        except importlib.metadata.PackageNotFoundError:
            absent.append(requirement)
    return absent


def ensure_requirements(wheel: Path, lib: Path) -> str | None:
    """Make skyguard's requirements importable; one line saying why not, else None."""
    lib.mkdir(parents=True, exist_ok=True)
    sys.path.append(str(lib))
    try:
        wanted = requirements(wheel)
    except (OSError, zipfile.BadZipFile, StopIteration, UnicodeDecodeError) as exc:
        return f"cannot read the shipped wheel {wheel.name}: {type(exc).__name__}"
    # Two callbacks at once (two jobs) must not both write into lib.
    with open(lib.with_name("lib.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        importlib.invalidate_caches()
        absent = missing(wanted)
        if not absent:
            return None
        command = [sys.executable, "-m", "pip", "install", "--quiet"]
        command += ["--disable-pip-version-check", "--target", str(lib), *absent]
        try:
            done = subprocess.run(
                command, stdin=subprocess.DEVNULL, timeout=PIP_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"cannot install {', '.join(absent)} for skyguard: {type(exc).__name__}"
        importlib.invalidate_caches()
        if done.returncode != 0 or missing(absent):
            return (
                f"cannot install {', '.join(absent)} for skyguard into {lib} "
                f"(pip exited {done.returncode}; the controller needs the package index)"
            )
    return None


def main(wheel: str) -> int:
    status = os.environ.get("JOB_STATUS", "")
    problem = ensure_requirements(Path(wheel), lib_dir())
    if problem is not None:
        print(f"{PREFIX} {problem}: nothing sent for {status}", flush=True)
        return 1
    from devops.skypilot.cli import main as cli_main

    return cli_main(["notify-event"])
