"""SkyPilot's node variables, the torchrun command built from them, and the NCCL env defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from devops.skypilot.node.environment import (
    COLLECTIVE_TIMEOUT_VAR,
    EnvironmentConfigError,
    SkyPilotEnv,
    collective_timeout,
    flight_recorder_dump,
    from_env,
    nccl_env_defaults,
    torchrun_command,
)
from tests.conftest import REPO, TAG_VAR
from tests.ports import reserve_port

TWO_NODES = {
    "SKYPILOT_NODE_RANK": "1",
    "SKYPILOT_NUM_NODES": "2",
    "SKYPILOT_NODE_IPS": "10.0.0.1\n10.0.0.2\n",
    "SKYPILOT_NUM_GPUS_PER_NODE": "8",
    "SKYPILOT_TASK_ID": "sky-managed-2024_01_01-00-00-00-000000_job-1_0",
    "SKYPILOT_CLUSTER_INFO": json.dumps(
        {"cluster_name": "c1", "cloud": "AWS", "region": "us-east-1", "zone": None}
    ),
}


def test_two_node_environment_is_read_in_full() -> None:
    env = from_env(TWO_NODES)
    assert env == SkyPilotEnv(
        node_rank=1,
        num_nodes=2,
        node_ips=("10.0.0.1", "10.0.0.2"),
        num_gpus_per_node=8,
        task_id="sky-managed-2024_01_01-00-00-00-000000_job-1_0",
        cluster_name="c1",
        cloud="AWS",
        region="us-east-1",
        zone=None,
        on_skypilot=True,
    )
    assert env.head_ip == "10.0.0.1" and env.node_ip == "10.0.0.2"
    assert not env.is_head and env.multi_node
    assert SkyPilotEnv.from_env(TWO_NODES) == env


def test_outside_skypilot_is_one_local_node() -> None:
    env = from_env({"HOME": "/root"})
    assert env == SkyPilotEnv()
    assert env.is_head and not env.multi_node and not env.on_skypilot
    assert env.node_ips == ("127.0.0.1",)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"SKYPILOT_NUM_NODES": None}, 2),  # inferred from the IP list
        ({"SKYPILOT_NODE_IPS": "10.0.0.1\r\n10.0.0.2"}, 2),  # CRLF, no trailing newline
        ({"SKYPILOT_NODE_IPS": "\n10.0.0.1\n\n10.0.0.2\n\n"}, 2),  # blank lines
    ],
)
def test_tolerated_variations(overrides: dict[str, str | None], expected: int) -> None:
    env = {**TWO_NODES, **overrides}
    assert from_env({k: v for k, v in env.items() if v is not None}).num_nodes == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"SKYPILOT_NODE_RANK": "2"},
            "SKYPILOT_NODE_RANK=2 is out of range for SKYPILOT_NUM_NODES=2",
        ),
        ({"SKYPILOT_NODE_RANK": "-1"}, "SKYPILOT_NODE_RANK=-1 must be >= 0"),
        ({"SKYPILOT_NODE_RANK": "one"}, "SKYPILOT_NODE_RANK='one' is not an integer"),
        ({"SKYPILOT_NUM_NODES": "3"}, "lists 2 address(es) but SKYPILOT_NUM_NODES=3"),
        ({"SKYPILOT_NUM_NODES": "0"}, "SKYPILOT_NUM_NODES=0 must be >= 1"),
        ({"SKYPILOT_NUM_NODES": "2.0"}, "SKYPILOT_NUM_NODES='2.0' is not an integer"),
        ({"SKYPILOT_NODE_IPS": ""}, "SKYPILOT_NUM_NODES=2 but SKYPILOT_NODE_IPS is empty"),
        ({"SKYPILOT_NODE_IPS": "10.0.0.1 10.0.0.2"}, "malformed address"),
        ({"SKYPILOT_NUM_GPUS_PER_NODE": "-8"}, "SKYPILOT_NUM_GPUS_PER_NODE=-8 must be >= 0"),
        ({"SKYPILOT_NUM_GPUS_PER_NODE": "eight"}, "is not an integer"),
        ({"SKYPILOT_CLUSTER_INFO": "{not json"}, "SKYPILOT_CLUSTER_INFO is not valid JSON"),
        ({"SKYPILOT_CLUSTER_INFO": "[1, 2]"}, "must be a JSON object, got list"),
    ],
)
def test_inconsistent_values_name_the_variable(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(EnvironmentConfigError) as raised:
        from_env({**TWO_NODES, **overrides})
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_torchrun_command_uses_the_head_as_rendezvous() -> None:
    argv = torchrun_command(from_env(TWO_NODES), ["train.py", "--lr", "3e-4"], master_port=1234)
    assert argv == [
        "torchrun",
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--nproc-per-node",
        "8",
        "--master-addr",
        "10.0.0.1",
        "--master-port",
        "1234",
        "--max-restarts",
        "0",
        "train.py",
        "--lr",
        "3e-4",
    ]


def test_torchrun_command_on_cpu_runs_one_process_and_forwards_the_grace() -> None:
    argv = torchrun_command(SkyPilotEnv(), ["-m", "pkg.train"], shutdown_timeout=12.5)
    assert argv[argv.index("--nproc-per-node") + 1] == "1"
    assert argv[argv.index("--shutdown-timeout") + 1] == "13"  # rounded up, never shorter
    assert argv[-2:] == ["-m", "pkg.train"]
    explicit = torchrun_command(SkyPilotEnv(), ["x.py"], nproc_per_node=3)
    assert explicit[explicit.index("--nproc-per-node") + 1] == "3"


@pytest.mark.parametrize(
    ("cmd", "kwargs", "message"),
    [
        ([], {}, "needs a command"),
        (["x.py"], {"master_port": 0}, "out of range"),
        (["x.py"], {"master_port": 70000}, "out of range"),
        (["x.py"], {"nproc_per_node": 0}, "must be >= 1"),
    ],
)
def test_torchrun_command_rejects_bad_input(
    cmd: list[str], kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(EnvironmentConfigError, match=message):
        torchrun_command(SkyPilotEnv(), cmd, **kwargs)


@pytest.mark.torch
def test_torchrun_parses_the_command_as_intended() -> None:
    """torch 2.13's own parser reads every option the way we mean it."""
    run = pytest.importorskip("torch.distributed.run")
    argv = torchrun_command(
        from_env(TWO_NODES), ["-m", "pkg.train", "--lr", "1"], shutdown_timeout=45
    )
    args = run.get_args_parser().parse_args(argv[1:])
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "8")
    assert (args.master_addr, args.master_port, args.max_restarts) == ("10.0.0.1", 29500, 0)
    assert args.shutdown_timeout == 45 and args.module is True
    assert args.training_script == "pkg.train" and args.training_script_args == ["--lr", "1"]
    assert args.rdzv_backend == "static"


@pytest.mark.torch
def test_torchrun_starts_the_ranks_with_our_rendezvous(tmp_path: Path, leak_tag: str) -> None:
    """A real torchrun from the built command: every rank sees the rendezvous we gave."""
    pytest.importorskip("torch.distributed.run")
    script = tmp_path / "show.py"
    script.write_text(
        "import json, os\n"
        "keys = ['RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT']\n"
        # One write(2) per line: both ranks share the pipe, and print() writes the
        # text and its newline apart when stdout is unbuffered (PYTHONUNBUFFERED).
        "line = 'RANKINFO ' + json.dumps({k: os.environ[k] for k in keys}) + '\\n'\n"
        "os.write(1, line.encode())\n"
    )
    env_vars = {"SKYPILOT_NODE_IPS": "127.0.0.1", "SKYPILOT_NUM_NODES": "1"}
    argv = torchrun_command(
        from_env(env_vars),
        [str(script)],
        master_port=reserve_port(),
        nproc_per_node=2,
        launcher=[sys.executable, "-m", "torch.distributed.run"],
    )
    env = {**_clean_env(), TAG_VAR: leak_tag}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    infos = [
        json.loads(line.split("RANKINFO ", 1)[1])
        for line in result.stdout.splitlines()
        if "RANKINFO " in line
    ]
    assert sorted(info["RANK"] for info in infos) == ["0", "1"]
    assert {info["MASTER_ADDR"] for info in infos} == {"127.0.0.1"}
    assert {info["WORLD_SIZE"] for info in infos} == {"2"}


def _clean_env() -> dict[str, str]:
    import os

    return {
        k: v for k, v in os.environ.items() if not k.startswith(("SKYPILOT_", "SKYGUARD_", "TORCH"))
    }


def test_nccl_defaults_fill_only_what_the_user_left_unset(tmp_path: Path) -> None:
    defaults = nccl_env_defaults({}, tmp_path, heartbeat_timeout=600)
    assert defaults == {
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
        "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000",
        "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": str(tmp_path / "nccl-trace" / "rank_"),
        COLLECTIVE_TIMEOUT_VAR: "300",
    }
    assert (tmp_path / "nccl-trace").is_dir(), "torch does not create the dump directory"


@pytest.mark.parametrize(
    ("user", "kept_out"),
    [
        ({"TORCH_NCCL_ASYNC_ERROR_HANDLING": "3"}, "TORCH_NCCL_ASYNC_ERROR_HANDLING"),
        ({"NCCL_ASYNC_ERROR_HANDLING": "0"}, "TORCH_NCCL_ASYNC_ERROR_HANDLING"),  # old alias
        ({"TORCH_NCCL_DUMP_ON_TIMEOUT": "0"}, "TORCH_NCCL_DUMP_ON_TIMEOUT"),
        ({"TORCH_NCCL_TRACE_BUFFER_SIZE": "0"}, "TORCH_NCCL_TRACE_BUFFER_SIZE"),
        ({"TORCH_FR_BUFFER_SIZE": "10"}, "TORCH_NCCL_TRACE_BUFFER_SIZE"),  # 2.13's new name
        ({"TORCH_NCCL_DEBUG_INFO_TEMP_FILE": "/x/r"}, "TORCH_NCCL_DEBUG_INFO_TEMP_FILE"),
        ({"TORCH_FR_DUMP_TEMP_FILE": "/x/r"}, "TORCH_NCCL_DEBUG_INFO_TEMP_FILE"),
        ({COLLECTIVE_TIMEOUT_VAR: "30"}, COLLECTIVE_TIMEOUT_VAR),
    ],
)
def test_a_user_setting_wins(tmp_path: Path, user: dict[str, str], kept_out: str) -> None:
    defaults = nccl_env_defaults(user, tmp_path, heartbeat_timeout=600)
    assert kept_out not in defaults
    assert len(defaults) == 4, "only the one setting the user chose is left out"


@pytest.mark.parametrize(
    ("heartbeat", "expected"),
    [(None, None), (0, None), (60, "30"), (900, "450"), (7200, "600")],
)
def test_collective_timeout_is_shorter_than_the_heartbeat(
    tmp_path: Path, heartbeat: float | None, expected: str | None
) -> None:
    defaults = nccl_env_defaults({}, tmp_path, heartbeat_timeout=heartbeat)
    assert defaults.get(COLLECTIVE_TIMEOUT_VAR) == expected
    if expected is not None:
        assert heartbeat is not None and float(expected) < heartbeat
        timeout = collective_timeout(defaults)
        assert timeout == timedelta(seconds=float(expected))


def test_collective_timeout_for_training_code() -> None:
    assert collective_timeout({}) is None
    assert collective_timeout({COLLECTIVE_TIMEOUT_VAR: "12.5"}) == timedelta(seconds=12.5)
    for bad in ("soon", "0", "-3", "nan"):
        with pytest.raises(EnvironmentConfigError, match=COLLECTIVE_TIMEOUT_VAR):
            collective_timeout({COLLECTIVE_TIMEOUT_VAR: bad})


def test_the_flight_recorder_dump_of_a_rank(tmp_path: Path) -> None:
    child_env = nccl_env_defaults({}, tmp_path, heartbeat_timeout=None)
    assert flight_recorder_dump(child_env, 3) == str(tmp_path / "nccl-trace" / "rank_3")
    user = {"TORCH_FR_DUMP_TEMP_FILE": "/fr/x_", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": "/old/y_"}
    assert flight_recorder_dump(user, 0) == "/fr/x_0"  # torch 2.13 reads the new name first
    assert flight_recorder_dump({}, 0) is None
