"""The NCCL preflight: the arithmetic of nccl-tests, and real gloo ranks on this machine."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from devops.skypilot.common.termination import EXIT_RETRY, Outcome, TerminationReason, decide
from devops.skypilot.node.environment import from_env
from devops.skypilot.node.nccl import preflight as nccl
from devops.skypilot.node.nccl.checks import detect_interconnect
from devops.skypilot.node.nccl.preflight import parse_size
from devops.skypilot.node.nccl.results import (
    DEFAULT_MIN_BUSBW_GBPS,
    MIB,
    BandwidthSample,
    CheckResult,
    CheckStatus,
    Interconnect,
    PreflightConfigError,
    PreflightOptions,
    PreflightResult,
    bandwidth_sample,
    bus_factor,
    format_table,
    iterations_for,
    message_sizes,
)
from tests.conftest import REPO, TAG_VAR
from tests.ports import reserve_port

#: Small sizes keep the real-process tests to seconds on a 2-core machine.
FAST = ["--max-size", "4M", "--iters", "4", "--timeout", "30"]


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    nccl.add_arguments(parser)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- arithmetic


def test_bus_bandwidth_follows_nccl_tests() -> None:
    assert bus_factor(1) == 0.0
    assert bus_factor(2) == 1.0
    assert bus_factor(8) == pytest.approx(1.75)
    sample = bandwidth_sample(256 * MIB, iters=2, seconds=0.1, world_size=8)
    assert sample.algbw_gbps == pytest.approx(256 * MIB / 0.1 / 1e9)
    assert sample.busbw_gbps == pytest.approx(sample.algbw_gbps * 1.75)


def test_default_sweep_is_1_to_256_mib_with_fewer_iterations_for_big_messages() -> None:
    sizes = message_sizes(1 * MIB, 256 * MIB)
    assert sizes[0] == MIB and sizes[-1] == 256 * MIB and len(sizes) == 9
    assert [iterations_for(size, 20) for size in sizes] == [20, 20, 20, 20, 16, 8, 4, 2, 2]
    assert iterations_for(MIB, 3) == 3


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", MIB), ("1M", MIB), ("256M", 256 * MIB), ("1MiB", MIB), ("2g", 2048 * MIB)],
)
def test_sizes_parse_like_nccl_tests(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "1.5M", "-1M", "0", "ten"])
def test_bad_sizes_are_rejected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_size": 8 * MIB, "max_size": MIB}, "message sizes"),
        ({"iters": 0}, "--iters"),
        ({"timeout": 0}, "--timeout"),
        ({"min_busbw_gbps": -1.0}, "--min-busbw"),
    ],
)
def test_bad_options_are_rejected(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(PreflightConfigError, match=message):
        PreflightOptions(**kwargs)  # type: ignore[arg-type]


def test_floors_come_from_the_interconnect_unless_given() -> None:
    assert PreflightOptions().floor_for(Interconnect.INFINIBAND) == 10.0
    assert PreflightOptions(min_busbw_gbps=3.5).floor_for(Interconnect.INFINIBAND) == 3.5
    assert set(DEFAULT_MIN_BUSBW_GBPS) == set(Interconnect)


def test_interconnect_guess_is_conservative(tmp_path: Path) -> None:
    assert detect_interconnect("gloo", multi_node=True, sysfs=tmp_path) is Interconnect.TCP
    assert detect_interconnect("nccl", multi_node=False, sysfs=tmp_path) is Interconnect.PCIE
    assert detect_interconnect("nccl", multi_node=True, sysfs=tmp_path) is Interconnect.ETHERNET
    (tmp_path / "class" / "infiniband" / "mlx5_0").mkdir(parents=True)
    assert detect_interconnect("nccl", multi_node=True, sysfs=tmp_path) is Interconnect.INFINIBAND


def _result(passed: bool, checks: tuple[CheckResult, ...]) -> PreflightResult:
    return PreflightResult(
        passed=passed,
        backend="gloo",
        world_size=2,
        interconnect=Interconnect.TCP,
        min_busbw_gbps=0.01,
        checks=checks,
        bandwidth=(BandwidthSample(MIB, 20, 0.001, 1.048576, 1.048576),),
        skipped_sizes=(256 * MIB,),
        seconds=1.5,
        cost_seconds=2.5,
    )


def test_a_failed_preflight_is_a_retryable_nccl_error() -> None:
    failed = _result(
        False,
        (
            CheckResult("rendezvous", CheckStatus.PASSED, "2 ranks joined", 0.1),
            CheckResult("all_reduce", CheckStatus.FAILED, "wrong result on rank(s) 1", 0.2),
        ),
    )
    verdict = failed.verdict()
    assert verdict is not None and verdict.reason is TerminationReason.NCCL_ERROR
    assert "all_reduce: wrong result on rank(s) 1" in verdict.detail
    decision = decide(Outcome(child_returncode=None, verdict=verdict))
    assert decision.exit_code == EXIT_RETRY
    assert _result(True, ()).verdict() is None


def test_result_survives_json_and_prints_as_a_table() -> None:
    result = _result(
        True, (CheckResult("barrier", CheckStatus.PASSED, "every rank arrived", 0.01),)
    )
    assert PreflightResult.from_json(json.loads(json.dumps(result.to_json()))) == result
    table = format_table(result)
    assert "algbw(GB/s)" in table and "busbw(GB/s)" in table
    assert "1048576" in table and "not measured (time budget)" in table
    assert "PASSED in 1.5s inside the ranks; cost 2.5s wall" in table


def test_outside_torchrun_without_nproc_is_a_clear_config_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert nccl.main(_parse()) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not under torchrun" in err and "--nproc" in err


# --------------------------------------------------------------------------- real ranks


@pytest.fixture
def tagged(monkeypatch: pytest.MonkeyPatch, leak_tag: str) -> str:
    """Ranks spawned from this process inherit the leak tag (and find the package)."""
    pytest.importorskip("torch.distributed")
    monkeypatch.setenv(TAG_VAR, leak_tag)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    return leak_tag


@pytest.mark.torch
def test_two_gloo_ranks_pass_and_report(
    tagged: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "preflight.json"
    assert nccl.main(_parse("--nproc", "2", "--json", str(out), *FAST)) == 0
    result = PreflightResult.from_json(json.loads(out.read_text()))
    assert result.passed and result.backend == "gloo" and result.world_size == 2
    assert [c.name for c in result.checks] == [
        "rendezvous",
        "all_reduce",
        "broadcast",
        "barrier",
        "bandwidth",
    ]
    assert [s.size_bytes for s in result.bandwidth] == [MIB, 2 * MIB, 4 * MIB]
    for sample in result.bandwidth:
        assert sample.busbw_gbps == pytest.approx(sample.algbw_gbps)  # 2(n-1)/n = 1 for n = 2
        assert sample.busbw_gbps > 0
    printed = capfd.readouterr().out
    assert printed.count("NCCL preflight PASSED") == 1, "one table, from the launcher"
    assert "wall, process start included" in printed


@pytest.mark.torch
def test_an_impossible_floor_fails_as_nccl_error(tagged: str, tmp_path: Path) -> None:
    out = tmp_path / "preflight.json"
    code = nccl.main(_parse("--nproc", "2", "--json", str(out), "--min-busbw", "1e9", *FAST))
    assert code == EXIT_RETRY
    result = PreflightResult.from_json(json.loads(out.read_text()))
    assert not result.passed
    assert [c.name for c in result.failures] == ["bandwidth"]
    assert "< floor 1e+09 GB/s" in result.failures[0].detail
    verdict = result.verdict()
    assert verdict is not None and verdict.reason is TerminationReason.NCCL_ERROR


def _rank_env(leak_tag: str, rank: int, world: int, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYPILOT_", "SKYGUARD_"))}
    env.update(
        {
            TAG_VAR: leak_tag,
            "PYTHONPATH": str(REPO),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
        }
    )
    return env


@pytest.mark.torch
def test_a_rank_that_never_comes_fails_the_rendezvous_in_bounded_time(
    tagged: str, tmp_path: Path
) -> None:
    out = tmp_path / "preflight.json"
    argv = [
        sys.executable,
        "-m",
        "devops.skypilot",
        "nccl-check",
        "--json",
        str(out),
        "--timeout",
        "8",
    ]
    process = subprocess.Popen(argv, env=_rank_env(tagged, 0, 2, reserve_port()), cwd=REPO)
    try:
        assert process.wait(timeout=60) == EXIT_RETRY
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    result = PreflightResult.from_json(json.loads(out.read_text()))
    # torch's rendezvous timeout, or (on a starved machine) the worker's own watchdog.
    assert not result.passed and result.failures[0].name in {"rendezvous", "preflight"}


@pytest.mark.torch
def test_a_rank_that_dies_after_joining_fails_the_others(tagged: str, tmp_path: Path) -> None:
    out = tmp_path / "preflight.json"
    port = reserve_port()
    survivor = subprocess.Popen(
        [sys.executable, "-m", "devops.skypilot", "nccl-check", "--json", str(out), *FAST],
        env=_rank_env(tagged, 0, 2, port),
        cwd=REPO,
    )
    dying = subprocess.Popen(
        [sys.executable, "-m", "tests.distributed.ranks", "die-after-join"],
        env=_rank_env(tagged, 1, 2, port),
        cwd=REPO,
    )
    try:
        assert dying.wait(timeout=60) == 3
        assert survivor.wait(timeout=60) == EXIT_RETRY
    finally:
        for process in (survivor, dying):
            if process.poll() is None:
                process.kill()
                process.wait()
    result = PreflightResult.from_json(json.loads(out.read_text()))
    assert not result.passed
    failure = result.failures[0]
    assert failure.name in {"rendezvous", "correctness", "barrier", "bandwidth"}
    assert "rank 0" in failure.detail
    verdict = result.verdict()
    assert verdict is not None and verdict.reason is TerminationReason.NCCL_ERROR


@pytest.mark.torch
def test_runs_as_a_torchrun_worker(tagged: str, tmp_path: Path) -> None:
    out = tmp_path / "preflight.json"
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(reserve_port()),
        "-m",
        "devops.skypilot",
        "nccl-check",
        "--json",
        str(out),
        *FAST,
    ]
    completed = subprocess.run(argv, cwd=REPO, timeout=120, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert PreflightResult.from_json(json.loads(out.read_text())).world_size == 2


@pytest.mark.torch
def test_two_fake_nodes_agree_through_run_preflight(tagged: str, tmp_path: Path) -> None:
    """The runner's path: each node runs torchrun with the job's rendezvous on loopback."""
    port = reserve_port()
    results: dict[int, PreflightResult] = {}

    def node(rank: int) -> None:
        sky = from_env(
            {
                "SKYPILOT_NODE_RANK": str(rank),
                "SKYPILOT_NUM_NODES": "2",
                "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.1",
            }
        )
        options = PreflightOptions(
            max_size=2 * MIB, iters=4, timeout=30, json_path=tmp_path / f"node{rank}.json"
        )
        results[rank] = nccl.run_preflight(sky, options, master_port=port)

    threads = [threading.Thread(target=node, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert set(results) == {0, 1}
    for result in results.values():
        assert result.passed, format_table(result)
        assert result.world_size == 2 and result.cost_seconds is not None
    assert [s.size_bytes for s in results[0].bandwidth] == [
        s.size_bytes for s in results[1].bandwidth
    ]
