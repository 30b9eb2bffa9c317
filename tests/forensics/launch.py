"""A launcher in the manner of torchrun: ``launch.py MODE...`` starts one
``hung.py MODE`` per argument with ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` set and
waits for them; the first to fail ends it with that code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HUNG = str(Path(__file__).with_name("hung.py"))


def main() -> int:
    modes = sys.argv[1:]
    ranks = []
    for rank, mode in enumerate(modes):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        env["WORLD_SIZE"] = str(len(modes))
        ranks.append(subprocess.Popen([sys.executable, HUNG, mode, "--beats", "3"], env=env))
    codes = [rank.wait() for rank in ranks]
    return next((code for code in codes if code), 0)


if __name__ == "__main__":
    sys.exit(main())
