"""A torchrun worker for the CLI tests: joins gloo, all-reduces, beats, reports.

Prints ``rank R of W sum S`` per step; ``--crash-rank R`` makes that rank raise.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

from devops.skypilot import heartbeat
from devops.skypilot.node.environment import collective_timeout


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--crash-rank", type=int, default=-1)
    args = parser.parse_args()
    dist.init_process_group("gloo", timeout=collective_timeout())
    rank, world = dist.get_rank(), dist.get_world_size()
    for _ in range(args.steps):
        value = torch.ones(4)
        dist.all_reduce(value)
        heartbeat.beat()
        print(f"rank {rank} of {world} sum {int(value[0])}", flush=True)
        if rank == args.crash_rank:
            raise RuntimeError(f"rank {rank}: simulated crash")
    print(
        f"rank {rank} env TORCH_NCCL_ASYNC_ERROR_HANDLING="
        f"{os.environ.get('TORCH_NCCL_ASYNC_ERROR_HANDLING')}",
        flush=True,
    )
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
