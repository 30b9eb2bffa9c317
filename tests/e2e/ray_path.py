"""SkyPilot's Ray path on a real two-node Ray cluster on this machine: run by the Python of
the venv ``tests/e2e/ray_runtime.sh`` makes (SkyPilot and Ray 2.9.3, as on a node), not
by pytest.

``cluster``: start Ray's head (node IP 127.0.0.2) and a second raylet (127.0.0.3), each
with one CPU, print ``RAY_ADDRESS=...`` and hold them until stdin closes. Two loopback
addresses, because SkyPilot's program maps each node to its IP (``127.0.0.1`` itself
would be rewritten by Ray to the machine's address).

``job RECIPE KEY=VALUE...``: what SkyPilot does for a multi-node task on a Ray cluster,
with SkyPilot's own code: ``CloudVmRayBackend._execute_task_n_nodes`` builds the
``RayCodeGen`` program from the recipe's task (``run:``, ``envs:``, its
``job_recovery``), the ``KEY=VALUE`` envs on top, for a two-node handle; the program is
run as the head's skylet runs it (``python -u sky_job_<id> > run.log``) against the
cluster in ``RAY_ADDRESS``, with the job in SkyPilot's job table under ``$HOME``. Then the
jobs controller's recovery decision on the exit codes the program stored
(``StrategyExecutor.make(...).should_restart_on_failure``). Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

#: Each node's address; SkyPilot's handle lists them in this (rank) order.
NODE_IPS = ("127.0.0.2", "127.0.0.3")
#: Ray's shared-memory store per node: the program moves a few small dicts.
OBJECT_STORE_BYTES = 80 * 1024 * 1024
#: A guard against a hang only: both scenarios end in well under a minute.
PROGRAM_TIMEOUT = 180.0


def hold_cluster() -> int:
    from ray.cluster_utils import Cluster

    common = {"num_cpus": 1, "object_store_memory": OBJECT_STORE_BYTES}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"node_ip_address": NODE_IPS[0], "include_dashboard": False, **common},
    )
    try:
        cluster.add_node(node_ip_address=NODE_IPS[1], **common)
        cluster.wait_for_nodes()
        print(f"RAY_ADDRESS={cluster.address}", flush=True)
        sys.stdin.read()
    finally:
        cluster.shutdown()
    return 0


def _task(recipe: Path, envs: dict[str, str]) -> Any:
    """The recipe's task on two nodes, without what needs a cloud (its bucket mount,
    setup and the controller's callback)."""
    import sky
    import yaml

    config = yaml.safe_load(recipe.read_text())
    for key in ("workdir", "file_mounts", "setup", "event_callback"):
        config.pop(key, None)
    config["num_nodes"] = len(NODE_IPS)
    config["envs"] = {**config["envs"], **envs}
    return sky.Task.from_yaml_config(config)


def run_job(recipe: Path, envs: dict[str, str]) -> int:
    import sky
    from sky.backends import cloud_vm_ray_backend
    from sky.jobs import recovery_strategy
    from sky.skylet import job_lib

    class Backend(cloud_vm_ray_backend.CloudVmRayBackend):
        """SkyPilot's backend, up to the point where it ships the program to the head."""

        program = ""

        def _exec_code_on_head(self, handle: Any, codegen: str, job_id: int, **_: Any) -> None:
            self.program = codegen

    task = _task(recipe, envs)
    handle = cloud_vm_ray_backend.CloudVmRayResourceHandle(
        cluster_name="skyguard-ray",
        cluster_name_on_cloud="skyguard-ray",
        cluster_yaml=None,
        launched_nodes=len(NODE_IPS),
        launched_resources=sky.Resources(infra="kubernetes", cpus=1),
        stable_internal_external_ips=[(ip, ip) for ip in NODE_IPS],
    )
    backend = Backend()
    # What _add_job does on the head, then _execute's multi-node branch.
    job_id, log_dir = job_lib.add_job(task.name, "skyguard", backend.run_timestamp, "2x[CPU:1]")
    backend._execute_task_n_nodes(handle, task, job_id, log_dir)
    script = Path.home() / ".sky" / "sky_app" / f"sky_job_{job_id}"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(backend.program)
    run_log = Path(log_dir).expanduser() / "run.log"
    run_log.parent.mkdir(parents=True, exist_ok=True)
    with run_log.open("wb") as out:
        program = subprocess.run(
            [sys.executable, "-u", str(script)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=PROGRAM_TIMEOUT,
            check=False,
        )
    codes = job_lib.get_exit_codes(job_id)
    status = job_lib.get_status(job_id)
    # The jobs controller's decision for the recipe's job_recovery (controller.py,
    # _monitor_one_task: the cluster's exit codes -> should_restart_on_failure).
    executor = recovery_strategy.StrategyExecutor.make(
        "skyguard-ray",
        backend,
        _task(recipe, envs),
        job_id=1,
        task_id=0,
        pool=None,
        starting=set(),
        starting_lock=asyncio.Lock(),
        starting_signal=asyncio.Condition(),
    )
    result = {
        "job_id": job_id,
        "program_exit": program.returncode,
        "status": None if status is None else status.value,
        "exit_codes": codes,
        "restart": executor.should_restart_on_failure(exit_codes=codes),
        "strategy": type(executor).__name__,
        "recover_on_exit_codes": executor.recover_on_exit_codes,
        "max_restarts_on_errors": executor.max_restarts_on_errors,
        "run_log": str(run_log),
    }
    print(json.dumps(result), flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["cluster"]:
        return hold_cluster()
    if argv[:1] == ["job"] and len(argv) >= 2:
        envs = dict(item.split("=", 1) for item in argv[2:])
        return run_job(Path(argv[1]), envs)
    print("usage: ray_path.py cluster | job RECIPE [KEY=VALUE...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
