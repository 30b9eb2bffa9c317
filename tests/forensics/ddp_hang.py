"""A gloo DDP-style loop under torchrun where rank 1 stops at step 3, outside any
collective, and rank 0 waits for it in ``all_reduce``: the hang of issue 12."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from devops.skypilot import heartbeat


def _run_epoch(rank: int, step: int, grad: torch.Tensor) -> None:
    if rank == 1 and step == 3:
        time.sleep(3600)
    dist.all_reduce(grad)


def main() -> None:
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    grad = torch.ones(4)
    for step in range(1_000_000):
        heartbeat.beat(force=True)
        _run_epoch(rank, step, grad)
        time.sleep(0.05)


if __name__ == "__main__":
    main()
