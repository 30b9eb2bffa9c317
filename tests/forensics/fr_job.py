"""A two-rank gloo job whose collective times out and leaves flight-recorder dumps.

``fr_job.py PORT`` starts two ranks of itself (``RANK`` set) and waits for them. Each
beats, runs three ``all_reduce``; then rank 1 stops in ``time.sleep`` outside any
collective, and rank 0 issues a fourth ``all_reduce`` that times out after 1 s.

On NCCL, torch's watchdog dumps every rank's flight recorder on a timeout, to
``$TORCH_NCCL_DEBUG_INFO_TEMP_FILE<rank>``. gloo (torch 2.13) records the same
entries but neither dumps on a timeout nor registers its groups in the dump's
``pg_config``, which torch's analyser needs. So each rank writes the bytes of
torch's own writer (``_dump_fr_trace``) itself, with the group and the backend
named as ProcessGroupNCCL writes them: rank 0 when its collective times out,
rank 1 before it stops (as its watchdog would, asked by rank 0's). A timeout and a
dump can take seconds on a loaded machine, so a thread of each rank beats until
both dumps are written (the hang the test looks at comes after them); then both
wait in ``time.sleep``, and the heartbeat timeout ends the job.
"""

from __future__ import annotations

import datetime
import os
import pickle
import subprocess
import sys
import threading
import time


def _nccl_shaped(raw: bytes, world: int) -> bytes:
    dump = pickle.loads(raw)
    ranks = str(list(range(world)))
    dump["pg_config"] = {"0": {"name": "0", "desc": "default_pg", "ranks": ranks}}
    for entry in dump["entries"]:
        entry["profiling_name"] = entry["profiling_name"].replace("gloo:", "nccl:", 1)
    return pickle.dumps(dump)


def _path(rank: int) -> str:
    return f"{os.environ['TORCH_NCCL_DEBUG_INFO_TEMP_FILE']}{rank}"


def _dump(rank: int) -> None:
    from torch._C._distributed_c10d import _dump_fr_trace

    path = _path(rank)
    with open(f"{path}.tmp", "wb") as handle:
        handle.write(_nccl_shaped(_dump_fr_trace(), 2))
    os.replace(f"{path}.tmp", path)


def rank_main(rank: int, port: int) -> None:
    import torch
    import torch.distributed as dist

    from devops.skypilot import heartbeat

    heartbeat.beat(force=True)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=1),
    )
    # Reading a dump back imports half of torch (seconds): done once here, in the
    # startup grace, not between two beats.
    _nccl_shaped(torch._C._distributed_c10d._dump_fr_trace(), 2)
    heartbeat.beat(force=True)
    tensor = torch.ones(4)
    for _ in range(3):
        dist.all_reduce(tensor)
        heartbeat.beat(force=True)
    threading.Thread(target=_beat_until_dumped, daemon=True).start()
    if rank == 0:
        try:
            dist.all_reduce(tensor)  # the fourth: rank 1 never joins
        except RuntimeError:
            print("rank 0: collective timed out", flush=True)
    _dump(rank)
    time.sleep(3600)


def _beat_until_dumped() -> None:
    from devops.skypilot import heartbeat

    deadline = time.monotonic() + 120
    while not all(map(os.path.exists, map(_path, (0, 1)))) and time.monotonic() < deadline:
        heartbeat.beat()
        time.sleep(0.05)


def main(port: int) -> int:
    env = {**os.environ, "TORCH_FR_BUFFER_SIZE": "2000"}
    ranks = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), str(port)], env={**env, "RANK": str(rank)}
        )
        for rank in range(2)
    ]
    codes = [rank.wait() for rank in ranks]
    return next((code for code in codes if code), 0)


if __name__ == "__main__":
    if len(sys.argv) == 3:
        rank_main(int(sys.argv[1]), int(sys.argv[2]))
    else:
        sys.exit(main(int(sys.argv[1])))
