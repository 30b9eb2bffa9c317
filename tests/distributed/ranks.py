"""Misbehaving ranks the preflight is tested against (run as real processes).

``python -m tests.distributed.ranks die-after-join``: joins the gloo group as the
rank its environment says, then dies without a word, as a node that loses power.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta


def die_after_join() -> int:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method="env://",
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        timeout=timedelta(seconds=20),
    )
    os._exit(3)


def main() -> int:
    mode = sys.argv[1]
    if mode == "die-after-join":
        return die_after_join()
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main())
