"""The NCCL / gloo preflight inside one rank: the checks, their thresholds and results.

Checks, all ranks together (torch.distributed: NCCL on GPUs, gloo on CPU):

1. rendezvous: every rank joins within the timeout;
2. all-reduce and broadcast (from the first and the last rank) give exact
   results on every rank; every rank learns which rank saw a mismatch;
3. barrier completes;
4. all-reduce bus bandwidth for 1 MiB..256 MiB messages, as nccl-tests define
   it: ``algbw = bytes / time`` (GB/s, 1e9), ``busbw = algbw * 2(n-1)/n``, the
   time being the slowest rank's. The peak busbw must reach a floor that
   depends on the interconnect (:data:`DEFAULT_MIN_BUSBW_GBPS`).

Every rank reaches the same verdict (flags and times are all-reduced), so every
node of a multi-node job stops or starts together. The process that is local
rank 0 prints the table and writes the JSON.

:func:`run_worker` is what each rank runs; launching the ranks and the
``skyguard nccl-check`` command live in :mod:`devops.skypilot.node.nccl.preflight`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from devops.skypilot.common.termination import EXIT_RETRY
from devops.skypilot.node.nccl.results import (
    MIB,
    Backend,
    BandwidthSample,
    CheckResult,
    CheckStatus,
    Interconnect,
    PreflightConfigError,
    PreflightOptions,
    PreflightResult,
    bandwidth_sample,
    format_table,
    iterations_for,
    message_sizes,
)
from devops.skypilot.node.state import write_json_atomic

logger = logging.getLogger(__name__)

#: The bandwidth sweep stops early when the next size would end later than this
#: many seconds before the deadline; the sizes left are reported as not measured.
_DEADLINE_MARGIN = 5.0
#: Seconds torch may take beyond the timeout it was given (TCPStore waits ~1 s more).
_TORCH_OVERSHOOT = 2.0


@dataclass(frozen=True)
class WorkerRanks:
    """Where this process sits in the job, as torchrun (or the local spawner) tells it."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerRanks:
        missing = [
            name
            for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
            if not env.get(name)
        ]
        if missing:
            raise PreflightConfigError(
                f"not under torchrun ({', '.join(missing)} unset): "
                "run it with torchrun, or pass --nproc N to spawn N local ranks"
            )
        try:
            rank = int(env["RANK"])
            world = int(env["WORLD_SIZE"])
            local_rank = int(env.get("LOCAL_RANK", env["RANK"]))
            local_world = int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"]))
        except ValueError as exc:
            raise PreflightConfigError(f"bad rank variable: {exc}") from None
        if world < 1 or not 0 <= rank < world or not 0 <= local_rank < local_world:
            raise PreflightConfigError(
                f"inconsistent ranks: RANK={rank} WORLD_SIZE={world} "
                f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world}"
            )
        return cls(rank, world, local_rank, local_world)

    @property
    def multi_node(self) -> bool:
        return self.world_size > self.local_world_size


def detect_interconnect(backend: str, multi_node: bool, sysfs: Path = Path("/sys")) -> Interconnect:
    """A conservative guess: gloo -> tcp; one node -> pcie; nodes -> infiniband if present.

    NVLink is never guessed: a box that should have it is held to its floor only
    when asked (``--interconnect nvlink``), so a PCIe box never fails by default.
    """
    if backend == Backend.GLOO.value:
        return Interconnect.TCP
    if not multi_node:
        return Interconnect.PCIE
    infiniband = sysfs / "class" / "infiniband"
    with contextlib.suppress(OSError):
        if infiniband.is_dir() and any(infiniband.iterdir()):
            return Interconnect.INFINIBAND
    return Interconnect.ETHERNET


class _Collectives:
    """The torch calls of the preflight, on one device, imported lazily."""

    def __init__(self, backend: Backend, ranks: WorkerRanks) -> None:
        try:
            import torch
            import torch.distributed as dist
        except ImportError:
            raise PreflightConfigError(
                "the preflight needs torch: install the 'torch' extra"
            ) from None
        self.torch: Any = torch
        self.dist: Any = dist
        use_nccl = backend is Backend.NCCL or (
            backend is Backend.AUTO and torch.cuda.is_available() and dist.is_nccl_available()
        )
        self.backend = Backend.NCCL if use_nccl else Backend.GLOO
        self.ranks = ranks
        self.device: Any = torch.device("cpu")

    def init(self, timeout: float) -> None:
        if self.backend is Backend.NCCL:
            self.device = self.torch.device("cuda", self.ranks.local_rank)
            self.torch.cuda.set_device(self.device)
        self.dist.init_process_group(
            self.backend.value,
            init_method="env://",
            rank=self.ranks.rank,
            world_size=self.ranks.world_size,
            timeout=timedelta(seconds=max(timeout, 1.0)),
        )

    def sync(self) -> None:
        if self.backend is Backend.NCCL:
            self.torch.cuda.synchronize(self.device)

    def close(self) -> None:
        # A broken group can hang in teardown; the process exits right after anyway.
        with contextlib.suppress(Exception):  # broad: teardown of a failed group
            self.dist.destroy_process_group()


_CHECK_ELEMENTS = MIB  # 4 MiB of float32 for the correctness checks
_PATTERN = 251  # values stay small integers: float32 sums are exact


def _failed_ranks(col: _Collectives, local_failures: Sequence[bool]) -> list[list[int]]:
    """Per check, the ranks where it failed: one SUM all-reduce over a rank-indexed matrix."""
    world = col.ranks.world_size
    flags = col.torch.zeros(
        (len(local_failures), world), dtype=col.torch.float32, device=col.device
    )
    for index, failed in enumerate(local_failures):
        flags[index, col.ranks.rank] = 1.0 if failed else 0.0
    col.dist.all_reduce(flags)
    rows = flags.cpu().tolist()
    return [[rank for rank, value in enumerate(row) if value > 0] for row in rows]


def _check_all_reduce(col: _Collectives) -> bool:
    torch = col.torch
    base = torch.arange(_CHECK_ELEMENTS, dtype=torch.float32, device=col.device) % _PATTERN
    tensor = base + col.ranks.rank
    col.dist.all_reduce(tensor)
    n = col.ranks.world_size
    expected = base * n + n * (n - 1) / 2
    return bool(torch.equal(tensor, expected))


def _check_broadcast(col: _Collectives) -> bool:
    torch = col.torch
    ok = True
    for root in sorted({0, col.ranks.world_size - 1}):
        expected = torch.arange(_CHECK_ELEMENTS, dtype=torch.float32, device=col.device) % _PATTERN
        expected = expected + root + 1
        tensor = expected.clone() if col.ranks.rank == root else torch.zeros_like(expected)
        col.dist.broadcast(tensor, src=root)
        ok = ok and bool(torch.equal(tensor, expected))
    return ok


def _sweep(
    col: _Collectives, options: PreflightOptions, deadline: float
) -> tuple[list[BandwidthSample], list[int]]:
    """All-reduce bandwidth per size; stops before the deadline, all ranks together."""
    torch = col.torch
    world = col.ranks.world_size
    samples: list[BandwidthSample] = []
    sizes = message_sizes(options.min_size, options.max_size)
    for index, size in enumerate(sizes):
        iters = iterations_for(size, options.iters)
        # Zeros: a sum of zeros stays finite however many iterations run.
        tensor = torch.zeros(size // 4, dtype=torch.float32, device=col.device)
        col.dist.all_reduce(tensor)  # warm-up: connections, buffers
        col.sync()
        start = time.monotonic()
        for _ in range(iters):
            col.dist.all_reduce(tensor)
        col.sync()
        elapsed = time.monotonic() - start
        del tensor
        # Predict the next size from this one; every rank must take the same
        # branch, so the stop flag is all-reduced with the times (MAX of both).
        following = sizes[index + 1] if index + 1 < len(sizes) else 0
        predicted = (
            elapsed * (following * iterations_for(following or 1, options.iters)) / (size * iters)
        )
        late = following > 0 and time.monotonic() + 2 * predicted > deadline - _DEADLINE_MARGIN
        agreed = torch.tensor([elapsed, 1.0 if late else 0.0], device=col.device)
        col.dist.all_reduce(agreed, op=col.dist.ReduceOp.MAX)
        slowest, stop = agreed.cpu().tolist()
        samples.append(bandwidth_sample(size, iters, slowest / iters, world))
        if stop > 0:
            return samples, list(sizes[index + 1 :])
    return samples, []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _correctness(col: _Collectives) -> list[CheckResult]:
    results: dict[str, tuple[bool, float]] = {}
    for name, check in (("all_reduce", _check_all_reduce), ("broadcast", _check_broadcast)):
        start = time.monotonic()
        results[name] = (check(col), time.monotonic() - start)
    failed = _failed_ranks(col, [not ok for ok, _ in results.values()])
    checks = []
    for (name, (_, seconds)), bad in zip(results.items(), failed, strict=True):
        if bad:
            detail = f"wrong result on rank(s) {', '.join(map(str, bad))}"
            checks.append(CheckResult(name, CheckStatus.FAILED, detail, seconds))
        else:
            checks.append(CheckResult(name, CheckStatus.PASSED, "exact on every rank", seconds))
    return checks


def _bandwidth_check(
    samples: Sequence[BandwidthSample], skipped: Sequence[int], world: int, floor: float
) -> CheckResult:
    if world == 1:
        return CheckResult("bandwidth", CheckStatus.SKIPPED, "one rank: no link to measure")
    if not samples:
        return CheckResult("bandwidth", CheckStatus.FAILED, "no size measured within the timeout")
    peak = max(s.busbw_gbps for s in samples)
    measured = f"peak busbw {peak:.3f} GB/s over {len(samples)} size(s)"
    if skipped:
        measured += f", {len(skipped)} not measured (time budget)"
    if peak < floor:
        return CheckResult("bandwidth", CheckStatus.FAILED, f"{measured} < floor {floor:g} GB/s")
    return CheckResult("bandwidth", CheckStatus.PASSED, f"{measured} >= floor {floor:g} GB/s")


class _Watchdog:
    """The worker's own bound: at the deadline it records a timeout and exits 75.

    A rank stuck in C++ (a collective waiting on a peer that never comes) does
    not return to Python; this thread does not need it to.
    """

    def __init__(self, seconds: float, on_expire: Callable[[], None]) -> None:
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._on_expire = on_expire

    def _expire(self) -> None:
        with contextlib.suppress(Exception):  # broad: must exit whatever happens
            self._on_expire()
        os._exit(EXIT_RETRY)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def run_worker(options: PreflightOptions, env: Mapping[str, str]) -> PreflightResult:
    """Run the checks as one rank; every rank must call it. Never raises for a check failure."""
    ranks = WorkerRanks.from_env(env)
    started = time.monotonic()
    deadline = started + options.timeout
    # Until torch is imported the backend is what was asked for ("auto" included).
    interconnect = options.interconnect or detect_interconnect(
        options.backend.value, ranks.multi_node
    )
    partial = PreflightResult(
        passed=False,
        backend=options.backend.value,
        world_size=ranks.world_size,
        interconnect=interconnect,
        min_busbw_gbps=options.floor_for(interconnect),
        checks=(
            CheckResult("preflight", CheckStatus.FAILED, f"timed out after {options.timeout:g}s"),
        ),
    )

    def expire() -> None:
        _publish(replace(partial, seconds=time.monotonic() - started), options, ranks)

    with _Watchdog(options.timeout, expire):
        result = _run_checks(options, ranks, started, deadline, partial)
    _publish(result, options, ranks)
    return result


def _run_checks(
    options: PreflightOptions,
    ranks: WorkerRanks,
    started: float,
    deadline: float,
    partial: PreflightResult,
) -> PreflightResult:
    checks: list[CheckResult] = []
    samples: list[BandwidthSample] = []
    skipped: list[int] = []
    col = _Collectives(options.backend, ranks)
    interconnect = options.interconnect or detect_interconnect(col.backend.value, ranks.multi_node)
    floor = options.floor_for(interconnect)
    stage = "rendezvous"
    try:
        start = time.monotonic()
        # torch overshoots its own timeouts by a second or so; the watchdog is the hard bound.
        col.init(deadline - start - _TORCH_OVERSHOOT)
        checks.append(
            CheckResult(
                "rendezvous",
                CheckStatus.PASSED,
                f"{ranks.world_size} ranks joined",
                time.monotonic() - start,
            )
        )
        stage = "correctness"
        checks += _correctness(col)
        stage = "barrier"
        start = time.monotonic()
        col.dist.barrier()
        elapsed = time.monotonic() - start
        checks.append(CheckResult("barrier", CheckStatus.PASSED, "every rank arrived", elapsed))
        if not any(check.failed for check in checks):
            stage = "bandwidth"
            start = time.monotonic()
            if ranks.world_size > 1:
                samples, skipped = _sweep(col, options, deadline)
            check = _bandwidth_check(samples, skipped, ranks.world_size, floor)
            checks.append(replace(check, seconds=time.monotonic() - start))
    except Exception as exc:  # broad: a dead peer or a broken link shows up as anything
        logger.error("NCCL preflight %s failed on rank %d: %s", stage, ranks.rank, exc)
        checks.append(
            CheckResult(stage, CheckStatus.FAILED, f"rank {ranks.rank}: {_first_line(exc)}")
        )
    finally:
        col.close()
    return replace(
        partial,
        passed=not any(check.failed for check in checks),
        backend=col.backend.value,
        interconnect=interconnect,
        min_busbw_gbps=floor,
        checks=tuple(checks),
        bandwidth=tuple(samples),
        skipped_sizes=tuple(skipped),
        seconds=time.monotonic() - started,
    )


_publish_lock = threading.Lock()


def _publish(result: PreflightResult, options: PreflightOptions, ranks: WorkerRanks) -> None:
    """Local rank 0 prints and writes the JSON; the others only log a failure."""
    with _publish_lock:
        if ranks.local_rank != 0:
            return
        if options.json_path is not None:
            write_json_atomic(options.json_path, result.to_json())
        if options.show:
            print(format_table(result), flush=True)
