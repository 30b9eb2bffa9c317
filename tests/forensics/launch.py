"""A launcher in the manner of torchrun: ``launch.py MODE...`` starts one
``hung.py MODE`` per argument with ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` set and
waits for them; the first to fail ends it with that code. The ranks meet at a
barrier before they hang (see ``hung.py``).

On node N of a multi-node job (``SKYPILOT_NODE_RANK``, ``SKYPILOT_NUM_NODES``) the
ranks are numbered globally, as torchrun numbers them: node N's first rank is
``N * len(MODES)``."""

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
    first = int(os.environ.get("SKYPILOT_NODE_RANK", "0")) * len(modes)
    world = int(os.environ.get("SKYPILOT_NUM_NODES", "1")) * len(modes)
    barrier = tempfile.mkdtemp(prefix="hung-barrier-")
    try:
        ranks = []
        for rank, mode in enumerate(modes):
            env = {**os.environ, "RANK": str(first + rank), "LOCAL_RANK": str(rank)}
            env.update(WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(len(modes)))
            env.update(HUNG_BARRIER=barrier)
            command = [sys.executable, HUNG, mode, "--beats", "3"]
            ranks.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
        codes = [rank.wait() for rank in ranks]
        return next((code for code in codes if code), 0)
    finally:
        shutil.rmtree(barrier, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
