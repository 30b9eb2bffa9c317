"""NCCL / gloo preflight: is the interconnect correct and fast enough to start training?

A broken link rarely fails loudly: a node whose InfiniBand fell back to TCP
sockets, or a GPU pair that lost NVLink, trains ten times slower or hangs in
the first collective hours later. The preflight is a cheap, bounded gate
(seconds; never more than ``--timeout``) that runs on every rank before the
command and turns such a node into :attr:`TerminationReason.NCCL_ERROR`, which
is retryable: SkyPilot replaces the allocation.

This module launches the ranks and holds the command line; the checks each
rank runs, and their results, are in :mod:`devops.skypilot.node.nccl.checks`.

Entry points: ``skyguard nccl-check`` (:func:`add_arguments` + :func:`main`),
run as a torchrun worker (it reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) or with ``--nproc N`` to spawn N local ranks;
:func:`run_preflight` for the runner's ``--preflight``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import psutil

from devops.skypilot.common.termination import EXIT_CONFIG_ERROR, EXIT_RETRY, EXIT_SUCCESS
from devops.skypilot.node.environment import (
    DEFAULT_MASTER_PORT,
    EnvironmentConfigError,
    SkyPilotEnv,
    torchrun_command,
)
from devops.skypilot.node.nccl.checks import run_worker
from devops.skypilot.node.nccl.results import (
    DEFAULT_ITERS,
    DEFAULT_MAX_SIZE,
    DEFAULT_MIN_SIZE,
    DEFAULT_TIMEOUT,
    MIB,
    Backend,
    CheckResult,
    CheckStatus,
    Interconnect,
    PreflightConfigError,
    PreflightOptions,
    PreflightResult,
    format_table,
)
from devops.skypilot.node.ports import free_listen_port
from devops.skypilot.node.process import dies_with_runner

logger = logging.getLogger(__name__)

#: What a launcher adds on top of the workers' timeout: interpreter and torch start.
LAUNCH_SLACK = 10.0
#: Preflight rendezvous port: next to the training's, so it never meets a
#: lingering socket of the training's own rendezvous.
DEFAULT_PREFLIGHT_PORT = DEFAULT_MASTER_PORT + 1
RESULT_FILE = "nccl-preflight.json"
#: How often a running preflight looks whether it should give up.
STOP_POLL = 0.1


# --------------------------------------------------------------------------- launchers


def read_result(path: Path) -> PreflightResult | None:
    """The result a worker wrote, or None when it is missing or unreadable."""
    try:
        return PreflightResult.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.debug("no preflight result in %s: %s", path, exc)
        return None


def _never() -> bool:
    return False


def _spawn(argv: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """A rank (or the launcher of a node's ranks): in a session of its own, and SIGKILLed
    by the kernel if the process that spawned it dies (a SIGKILLed runner's preflight
    does not run on to its timeout). Spawned from the main thread, which the kernel
    watches for that."""
    return subprocess.Popen(
        argv, env=dict(env), start_new_session=True, preexec_fn=dies_with_runner()
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a launched process, its process group and every descendant: torchrun's
    workers run in sessions of their own."""
    descendants: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        descendants = psutil.Process(proc.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for descendant in descendants:
        with contextlib.suppress(psutil.Error):
            descendant.kill()
    proc.wait()


def _wait_all(
    procs: Sequence[subprocess.Popen[bytes]], deadline: float, stop: Callable[[], bool]
) -> str | None:
    """Wait for every process until the deadline or ``stop()``; None when all ended,
    else why not (and every process killed)."""
    try:
        for proc in procs:
            while True:
                if stop():
                    return "stopped (the runner was signalled)"
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timed out"
                try:
                    proc.wait(timeout=min(remaining, STOP_POLL))
                    break
                except subprocess.TimeoutExpired:
                    continue
        return None
    finally:
        for proc in procs:
            if proc.poll() is None:
                _kill_group(proc)


def _launch_failure(
    options: PreflightOptions, world_size: int, detail: str, cost: float
) -> PreflightResult:
    interconnect = options.interconnect or Interconnect.TCP
    return PreflightResult(
        passed=False,
        backend=options.backend.value,
        world_size=world_size,
        interconnect=interconnect,
        min_busbw_gbps=options.floor_for(interconnect),
        checks=(CheckResult("launch", CheckStatus.FAILED, detail, cost),),
        seconds=cost,
        cost_seconds=cost,
    )


def _collect(
    procs: Sequence[subprocess.Popen[bytes]],
    unfinished: str | None,
    json_path: Path,
    options: PreflightOptions,
    world_size: int,
    started: float,
) -> PreflightResult:
    cost = time.monotonic() - started
    if unfinished is not None:
        return _launch_failure(
            options, world_size, f"{unfinished} after {cost:.1f}s; every rank killed", cost
        )
    result = read_result(json_path)
    codes = [proc.returncode for proc in procs]
    if result is None:
        return _launch_failure(options, world_size, f"no result written; exit codes {codes}", cost)
    result = replace(result, cost_seconds=cost)
    if result.passed and any(code != 0 for code in codes):
        # The checks agreed but a rank died afterwards: not a node to start on.
        check = CheckResult("launch", CheckStatus.FAILED, f"a rank exited non-zero: {codes}", cost)
        result = replace(result, passed=False, checks=(*result.checks, check))
    return result


def _module_command(options: PreflightOptions, json_path: Path) -> list[str]:
    # Each rank runs the same subcommand through the package entry point, quietly:
    # the launcher prints the table, with the whole cost in it.
    quiet = replace(options, show=False)
    return ["-m", "devops.skypilot", "nccl-check", *quiet.worker_args(json_path)]


Spawn = Callable[[list[str]], list["subprocess.Popen[bytes]"]]


def _launch(
    options: PreflightOptions, world_size: int, spawn: Spawn, stop: Callable[[], bool]
) -> PreflightResult:
    """Start the workers ``spawn`` makes, bound them, and read local rank 0's result.

    ``stop()`` turning true (the runner got a stop signal) kills them at once.
    """
    with tempfile.TemporaryDirectory(prefix="skyguard-nccl-") as tmp:
        json_path = options.json_path or Path(tmp) / RESULT_FILE
        json_path.unlink(missing_ok=True)  # a stale result must not pass for this one
        started = time.monotonic()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            procs = spawn(_module_command(options, json_path))
            unfinished = _wait_all(procs, started + options.timeout + LAUNCH_SLACK, stop)
        finally:
            # Also when spawning failed half-way: no rank outlives the launcher.
            for proc in procs:
                if proc.poll() is None:
                    _kill_group(proc)
        result = _collect(procs, unfinished, json_path, options, world_size, started)
    if options.show:
        print(format_table(result), flush=True)
    return result


def spawn_local(
    nproc: int,
    options: PreflightOptions,
    *,
    master_port: int | None = None,
    stop: Callable[[], bool] = _never,
    env: Mapping[str, str] | None = None,
) -> PreflightResult:
    """Run the preflight with ``nproc`` ranks on this machine (single node, no torchrun).
    ``env``: variables added to the ranks' environment."""
    if nproc < 1:
        raise PreflightConfigError(f"--nproc must be >= 1, got {nproc}")
    port = master_port or free_listen_port()

    def spawn(module: list[str]) -> list[subprocess.Popen[bytes]]:
        procs = []
        for rank in range(nproc):
            ranks = {
                "RANK": rank,
                "WORLD_SIZE": nproc,
                "LOCAL_RANK": rank,
                "LOCAL_WORLD_SIZE": nproc,
            }
            rank_env = {**os.environ, **(env or {})}
            rank_env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            rank_env.update({name: str(value) for name, value in ranks.items()})
            procs.append(_spawn([sys.executable, *module], rank_env))
        return procs

    return _launch(options, nproc, spawn, stop)


def run_preflight(
    sky_env: SkyPilotEnv,
    options: PreflightOptions,
    *,
    master_port: int = DEFAULT_PREFLIGHT_PORT,
    launcher: Sequence[str] | None = None,
    stop: Callable[[], bool] = _never,
    env: Mapping[str, str] | None = None,
) -> PreflightResult:
    """The runner's ``--preflight`` on this node: all nodes must call it at about the same time.

    One node: ``max(GPUs, 1)`` local ranks, spawned directly. Several nodes:
    torchrun with the job's rendezvous on ``master_port``, one rank per GPU;
    each node reads the result its local rank 0 wrote (they all agree).
    Prints the table unless ``options.show`` is off. Never raises for a failed
    check; bounded by ``options.timeout`` plus :data:`LAUNCH_SLACK`, and cut short
    (every rank killed) as soon as ``stop()`` is true.
    """
    nproc = max(sky_env.num_gpus_per_node, 1)
    if not sky_env.multi_node:
        return spawn_local(nproc, options, stop=stop, env=env)

    def spawn(module: list[str]) -> list[subprocess.Popen[bytes]]:
        try:
            argv = torchrun_command(
                sky_env,
                module,
                master_port=master_port,
                nproc_per_node=nproc,
                launcher=launcher or (sys.executable, "-m", "torch.distributed.run"),
            )
        except EnvironmentConfigError as exc:
            raise PreflightConfigError(str(exc)) from None
        return [_spawn(argv, {**os.environ, **(env or {})})]

    return _launch(options, sky_env.num_nodes * nproc, spawn, stop)


# --------------------------------------------------------------------------- CLI

_SIZE_UNITS: Mapping[str, int] = {"": 1, "K": 1024, "M": MIB, "G": 1024 * MIB}


def parse_size(text: str) -> int:
    """``1048576``, ``1M``, ``256M``, ``1G`` (binary units, as nccl-tests)."""
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = raw[-1:] if raw[-1:] in _SIZE_UNITS and raw[-1:] else ""
    number = raw[: len(raw) - len(unit)]
    try:
        value = int(number) * _SIZE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 1048576, 1M, 256M") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be > 0, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``skyguard nccl-check``."""
    parser.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="spawn this many local ranks (single node); without it, run as a torchrun worker",
    )
    parser.add_argument(
        "--backend",
        choices=[b.value for b in Backend],
        default=Backend.AUTO.value,
        help="auto: nccl when CUDA is available, else gloo",
    )
    parser.add_argument(
        "--interconnect",
        choices=[i.value for i in Interconnect],
        default=None,
        help="picks the default bandwidth floor; default: detected (conservative)",
    )
    parser.add_argument(
        "--min-busbw",
        type=float,
        default=None,
        metavar="GBPS",
        help="floor on the peak all-reduce bus bandwidth, GB/s (overrides the interconnect's)",
    )
    parser.add_argument("--min-size", type=parse_size, default=DEFAULT_MIN_SIZE, metavar="SIZE")
    parser.add_argument("--max-size", type=parse_size, default=DEFAULT_MAX_SIZE, metavar="SIZE")
    parser.add_argument(
        "--iters", type=int, default=DEFAULT_ITERS, help="timed iterations per size, at most"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="bound on the whole preflight inside the workers",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="write the result here"
    )
    parser.add_argument("--quiet", action="store_true", help="do not print the table")


def options_from_args(args: argparse.Namespace) -> PreflightOptions:
    return PreflightOptions(
        backend=Backend(args.backend),
        interconnect=None if args.interconnect is None else Interconnect(args.interconnect),
        min_busbw_gbps=args.min_busbw,
        min_size=args.min_size,
        max_size=args.max_size,
        iters=args.iters,
        timeout=args.timeout,
        json_path=args.json,
        show=not args.quiet,
    )


def main(args: argparse.Namespace) -> int:
    """0: passed; 75: a check failed (NCCL_ERROR, retryable); 2: bad configuration."""
    try:
        options = options_from_args(args)
        if args.nproc is not None:
            result = spawn_local(args.nproc, options)
        else:
            result = run_worker(options, os.environ)
    except PreflightConfigError as exc:
        print(f"skyguard nccl-check: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    verdict = result.verdict()
    if verdict is not None:
        logger.error("%s", verdict.detail)
        return EXIT_RETRY
    return EXIT_SUCCESS
