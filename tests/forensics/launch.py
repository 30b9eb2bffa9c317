"""A launcher in the manner of torchrun: ``launch.py MODE...`` starts one
``hung.py MODE`` per argument with ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` set and
waits for them; the first to fail ends it with that code. The ranks meet at a
barrier before they hang (see ``hung.py``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HUNG = str(Path(__file__).with_name("hung.py"))


def main() -> int:
    modes = sys.argv[1:]
    barrier = tempfile.mkdtemp(prefix="hung-barrier-")
    try:
        ranks = []
        for rank, mode in enumerate(modes):
            env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            env.update(WORLD_SIZE=str(len(modes)), HUNG_BARRIER=barrier)
            command = [sys.executable, HUNG, mode, "--beats", "3"]
            ranks.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
        codes = [rank.wait() for rank in ranks]
        return next((code for code in codes if code), 0)
    finally:
        shutil.rmtree(barrier, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
