"""SkyPilot's per-node variables as one typed object, and what a distributed job derives from it.

SkyPilot runs the task's ``run:`` once per node and tells each copy who it is:

=============================  ==============================================
``SKYPILOT_NODE_RANK``         this node's rank, 0 = head
``SKYPILOT_NUM_NODES``         how many nodes run the task
``SKYPILOT_NODE_IPS``          one IP per line, in rank order (head first)
``SKYPILOT_NUM_GPUS_PER_NODE`` accelerators per node (0 on CPU-only nodes)
``SKYPILOT_TASK_ID``           stable across managed-job recoveries
``SKYPILOT_CLUSTER_INFO``      JSON: cluster_name, cloud, region, zone
=============================  ==============================================

Outside SkyPilot none are set and :func:`from_env` describes one local node.
Inconsistent values raise :class:`EnvironmentConfigError` with one line naming
the variable: a node that guessed its rank would join the wrong rendezvous.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

NODE_RANK = "SKYPILOT_NODE_RANK"
NUM_NODES = "SKYPILOT_NUM_NODES"
NODE_IPS = "SKYPILOT_NODE_IPS"
NUM_GPUS_PER_NODE = "SKYPILOT_NUM_GPUS_PER_NODE"
TASK_ID = "SKYPILOT_TASK_ID"
CLUSTER_INFO = "SKYPILOT_CLUSTER_INFO"

#: torchrun's own default rendezvous port.
DEFAULT_MASTER_PORT = 29500
#: The launcher the training environment provides; tests pass ``python -m torch.distributed.run``.
DEFAULT_LAUNCHER: tuple[str, ...] = ("torchrun",)

#: Seconds, read by training code for ``init_process_group(timeout=...)``: torch
#: itself reads no variable for the collective timeout (see :func:`collective_timeout`).
COLLECTIVE_TIMEOUT_VAR = "SKYGUARD_COLLECTIVE_TIMEOUT"
#: torch's default NCCL collective timeout (``kProcessGroupNCCLDefaultTimeout``), seconds.
TORCH_DEFAULT_COLLECTIVE_TIMEOUT = 600.0
#: Flight-recorder entries kept per process (torch 2.13's own default; older torch had 0 = off).
TRACE_BUFFER_SIZE = 2000
#: Directory under the state dir where the flight recorder dumps, one file per global rank.
NCCL_TRACE_DIR = "nccl-trace"


class EnvironmentConfigError(ValueError):
    """A SkyPilot variable is missing, malformed or inconsistent with another."""


@dataclass(frozen=True)
class SkyPilotEnv:
    """Who this node is in the job. Defaults describe a single node outside SkyPilot."""

    node_rank: int = 0
    num_nodes: int = 1
    #: One address per node in rank order; ``node_ips[0]`` is the head.
    node_ips: tuple[str, ...] = ("127.0.0.1",)
    num_gpus_per_node: int = 0
    task_id: str | None = None
    cluster_name: str | None = None
    cloud: str | None = None
    region: str | None = None
    zone: str | None = None
    #: Whether any SkyPilot variable was set (False: a plain local run).
    on_skypilot: bool = False

    @property
    def is_head(self) -> bool:
        return self.node_rank == 0

    @property
    def multi_node(self) -> bool:
        return self.num_nodes > 1

    @property
    def head_ip(self) -> str:
        return self.node_ips[0]

    @property
    def node_ip(self) -> str:
        """This node's address on the cluster network."""
        return self.node_ips[self.node_rank]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SkyPilotEnv:
        return from_env(env)


def _int_var(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise EnvironmentConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise EnvironmentConfigError(f"{name}={value} must be >= {minimum}")
    return value


def _cluster_info(env: Mapping[str, str]) -> dict[str, str | None]:
    raw = env.get(CLUSTER_INFO, "").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise EnvironmentConfigError(f"{CLUSTER_INFO} is not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise EnvironmentConfigError(
            f"{CLUSTER_INFO} must be a JSON object, got {type(data).__name__}"
        )
    fields = ("cluster_name", "cloud", "region", "zone")
    return {key: None if data.get(key) is None else str(data[key]) for key in fields}


def from_env(env: Mapping[str, str]) -> SkyPilotEnv:
    """Read SkyPilot's variables; raises :class:`EnvironmentConfigError` on inconsistent values."""
    ips = tuple(line.strip() for line in env.get(NODE_IPS, "").splitlines() if line.strip())
    bad = [ip for ip in ips if any(ch.isspace() for ch in ip)]
    if bad:
        raise EnvironmentConfigError(f"{NODE_IPS} has a malformed address: {bad[0]!r}")
    num_nodes = _int_var(env, NUM_NODES, default=len(ips) or 1, minimum=1)
    node_rank = _int_var(env, NODE_RANK, default=0, minimum=0)
    gpus = _int_var(env, NUM_GPUS_PER_NODE, default=0, minimum=0)
    if not ips:
        if num_nodes > 1:
            raise EnvironmentConfigError(
                f"{NUM_NODES}={num_nodes} but {NODE_IPS} is empty: cannot find the head node"
            )
        ips = ("127.0.0.1",)
    if len(ips) != num_nodes:
        raise EnvironmentConfigError(
            f"{NODE_IPS} lists {len(ips)} address(es) but {NUM_NODES}={num_nodes}"
        )
    if node_rank >= num_nodes:
        raise EnvironmentConfigError(
            f"{NODE_RANK}={node_rank} is out of range for {NUM_NODES}={num_nodes}"
        )
    info = _cluster_info(env)
    names = (NODE_RANK, NUM_NODES, NODE_IPS, NUM_GPUS_PER_NODE, TASK_ID, CLUSTER_INFO)
    return SkyPilotEnv(
        node_rank=node_rank,
        num_nodes=num_nodes,
        node_ips=ips,
        num_gpus_per_node=gpus,
        task_id=env.get(TASK_ID, "").strip() or None,
        cluster_name=info.get("cluster_name"),
        cloud=info.get("cloud"),
        region=info.get("region"),
        zone=info.get("zone"),
        on_skypilot=any(name in env for name in names),
    )


def torchrun_command(
    env: SkyPilotEnv,
    cmd: Sequence[str],
    *,
    master_port: int = DEFAULT_MASTER_PORT,
    nproc_per_node: int | None = None,
    shutdown_timeout: float | None = None,
    launcher: Sequence[str] = DEFAULT_LAUNCHER,
) -> list[str]:
    """The torchrun command line that runs ``cmd`` on this node of a static rendezvous.

    ``cmd`` is what torchrun takes after its options: a script and its arguments,
    or ``-m module args`` / ``--no-python prog args`` (torchrun parses those two
    flags itself). ``--max-restarts 0``: the runner and SkyPilot own recovery, a
    torchrun restart would hide a fault from both. ``shutdown_timeout`` is the
    runner's ``--grace``, so torchrun does not SIGKILL the workers after its own
    fixed 30 s while the runner is still waiting.
    """
    if not cmd:
        raise EnvironmentConfigError("torchrun needs a command to run")
    if not 0 < master_port < 65536:
        raise EnvironmentConfigError(f"master port {master_port} is out of range")
    nproc = nproc_per_node if nproc_per_node is not None else max(env.num_gpus_per_node, 1)
    if nproc < 1:
        raise EnvironmentConfigError(f"nproc per node must be >= 1, got {nproc}")
    argv = [
        *launcher,
        "--nnodes",
        str(env.num_nodes),
        "--node-rank",
        str(env.node_rank),
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        env.head_ip,
        "--master-port",
        str(master_port),
        "--max-restarts",
        "0",
    ]
    if shutdown_timeout is not None:
        # torchrun takes whole seconds; rounding up never undercuts the runner's grace.
        argv += ["--shutdown-timeout", str(max(math.ceil(shutdown_timeout), 0))]
    return [*argv, *cmd]


def _collective_timeout_seconds(heartbeat_timeout: float | None) -> float | None:
    """Half the heartbeat timeout, capped at torch's own 10 min default.

    The watchdog must fire, dump and log before the heartbeat monitor kills the
    job, or a stuck collective ends as an anonymous hang. The heartbeat clock
    starts at the last beat, up to one step before the collective is issued, so
    half leaves room for a step plus the dump.
    """
    if heartbeat_timeout is None or heartbeat_timeout <= 0:
        return None
    return min(heartbeat_timeout / 2, TORCH_DEFAULT_COLLECTIVE_TIMEOUT)


#: Each default with the other names torch reads for the same setting: a user who
#: set any of them has chosen, and the runner leaves the setting alone.
_ALIASES: Mapping[str, tuple[str, ...]] = {
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": ("NCCL_ASYNC_ERROR_HANDLING",),
    COLLECTIVE_TIMEOUT_VAR: (),
    "TORCH_NCCL_DUMP_ON_TIMEOUT": (),
    "TORCH_NCCL_TRACE_BUFFER_SIZE": ("TORCH_FR_BUFFER_SIZE",),
    "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": ("TORCH_FR_DUMP_TEMP_FILE",),
}


def nccl_env_defaults(
    env: Mapping[str, str], state_dir: Path, heartbeat_timeout: float | None
) -> dict[str, str]:
    """NCCL settings for the child's environment, only those the user has not set.

    - ``TORCH_NCCL_ASYNC_ERROR_HANDLING=1``: a failed or timed-out collective
      tears the process down instead of leaving it blocked.
    - ``SKYGUARD_COLLECTIVE_TIMEOUT`` (seconds, only with a heartbeat timeout):
      shorter than the heartbeat timeout. torch reads no variable for this;
      training code passes :func:`collective_timeout` to ``init_process_group``.
    - ``TORCH_NCCL_DUMP_ON_TIMEOUT=1`` and ``TORCH_NCCL_TRACE_BUFFER_SIZE``: the
      flight recorder keeps the last collectives and dumps them on a timeout.
    - ``TORCH_NCCL_DEBUG_INFO_TEMP_FILE=<state-dir>/nccl-trace/rank_``: where;
      torch appends the global rank. The directory is created here, because
      torch does not create it and would fail the dump.
    """
    values: dict[str, str] = {
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
        "TORCH_NCCL_TRACE_BUFFER_SIZE": str(TRACE_BUFFER_SIZE),
        "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": str(state_dir / NCCL_TRACE_DIR / "rank_"),
    }
    timeout = _collective_timeout_seconds(heartbeat_timeout)
    if timeout is not None:
        values[COLLECTIVE_TIMEOUT_VAR] = f"{timeout:g}"
    chosen = {
        name: value
        for name, value in values.items()
        if not any(alias in env for alias in (name, *_ALIASES[name]))
    }
    if "TORCH_NCCL_DEBUG_INFO_TEMP_FILE" in chosen:
        (state_dir / NCCL_TRACE_DIR).mkdir(parents=True, exist_ok=True)
    return chosen


def flight_recorder_dump(env: Mapping[str, str], rank: int) -> str | None:
    """Where torch dumps the flight recorder of global ``rank`` under ``env``, or None.

    torch appends the rank to the prefix, reading ``TORCH_FR_DUMP_TEMP_FILE``
    first and ``TORCH_NCCL_DEBUG_INFO_TEMP_FILE`` second. None when neither is
    set: torch's own default (``~/.cache/torch/comm_lib_trace_rank_``) depends
    on its version, so naming it would be a guess.
    """
    for name in ("TORCH_FR_DUMP_TEMP_FILE", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE"):
        prefix = env.get(name)
        if prefix:
            return f"{prefix}{rank}"
    return None


def collective_timeout(env: Mapping[str, str] | None = None) -> timedelta | None:
    """The collective timeout the runner chose, for ``init_process_group(timeout=...)``.

    None when the runner set none (no heartbeat timeout) and torch's default applies.
    Training code::

        dist.init_process_group("nccl", timeout=collective_timeout())
    """
    source = os.environ if env is None else env
    raw = source.get(COLLECTIVE_TIMEOUT_VAR, "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise EnvironmentConfigError(
            f"{COLLECTIVE_TIMEOUT_VAR}={raw!r} is not a number of seconds"
        ) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise EnvironmentConfigError(f"{COLLECTIVE_TIMEOUT_VAR}={raw!r} must be > 0")
    return timedelta(seconds=seconds)
