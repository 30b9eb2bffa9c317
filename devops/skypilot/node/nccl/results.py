"""The NCCL / gloo preflight's options, thresholds and results, and the table it prints.

Shared by the launcher (:mod:`.preflight`) and the ranks (:mod:`.checks`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from devops.skypilot.common.termination import TerminationReason, Verdict

MIB = 1024 * 1024
DEFAULT_MIN_SIZE = 1 * MIB
DEFAULT_MAX_SIZE = 256 * MIB
#: Upper bound on timed iterations per size; large sizes get fewer (see :func:`iterations_for`).
DEFAULT_ITERS = 20
#: Bytes moved per size at most (besides the warm-up): keeps 256 MiB to 2 iterations.
_BYTES_PER_SIZE = 256 * MIB
#: Whole preflight, rendezvous included, inside the workers.
DEFAULT_TIMEOUT = 45.0


class PreflightConfigError(ValueError):
    """The preflight cannot run as configured (bad option, not under torchrun)."""


class Interconnect(str, Enum):
    """What carries the collectives; picks the default bandwidth floor."""

    NVLINK = "nvlink"
    """GPUs of one node over NVLink / NVSwitch."""
    PCIE = "pcie"
    """GPUs of one node over PCIe (also the safe guess for one node)."""
    INFINIBAND = "infiniband"
    """Nodes over InfiniBand / RoCE (GPUDirect RDMA)."""
    ETHERNET = "ethernet"
    """Nodes over plain Ethernet (NCCL sockets)."""
    TCP = "tcp"
    """gloo on CPU: loopback or sockets. Checks correctness more than speed."""


#: Floors on the peak all-reduce bus bandwidth, GB/s. Each is far below a healthy
#: link of its kind and above what that link's fallback gives (NVLink -> PCIe,
#: InfiniBand -> TCP sockets), so it catches a degraded node, not ordinary jitter.
DEFAULT_MIN_BUSBW_GBPS: Mapping[Interconnect, float] = {
    # H100 8-GPU NVSwitch ~450, A100 ~230, 2-GPU NVLink bridge ~50; PCIe ~10-20.
    Interconnect.NVLINK: 40.0,
    # PCIe gen3/4 x16 ~10-20; through host memory ~2-5.
    Interconnect.PCIE: 3.0,
    # One HDR/NDR NIC ~23-45, eight ~180-360; NCCL over TCP sockets ~1-5.
    Interconnect.INFINIBAND: 10.0,
    # 10-100 GbE ~1-10.
    Interconnect.ETHERNET: 0.5,
    # Loopback gloo on a small VM ~0.5-1.
    Interconnect.TCP: 0.01,
}


class Backend(str, Enum):
    AUTO = "auto"
    NCCL = "nccl"
    GLOO = "gloo"


class CheckStatus(str, Enum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    """Not run: an earlier check failed, or there was nothing to measure."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: CheckStatus
    detail: str
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status is CheckStatus.FAILED


@dataclass(frozen=True)
class BandwidthSample:
    """One message size, as a row of nccl-tests' all_reduce_perf."""

    size_bytes: int
    iters: int
    #: Mean seconds per all-reduce, the slowest rank's.
    seconds: float
    algbw_gbps: float
    busbw_gbps: float


def bus_factor(world_size: int) -> float:
    """nccl-tests' all-reduce bus factor: each byte crosses 2(n-1)/n links."""
    return 2.0 * (world_size - 1) / world_size


def bandwidth_sample(
    size_bytes: int, iters: int, seconds: float, world_size: int
) -> BandwidthSample:
    algbw = size_bytes / seconds / 1e9 if seconds > 0 else math.inf
    return BandwidthSample(size_bytes, iters, seconds, algbw, algbw * bus_factor(world_size))


def iterations_for(size_bytes: int, max_iters: int) -> int:
    """Timed iterations for one size: at least 2, at most ``max_iters``, ~256 MiB moved."""
    return max(2, min(max_iters, _BYTES_PER_SIZE // max(size_bytes, 1)))


def message_sizes(min_size: int, max_size: int) -> tuple[int, ...]:
    """Powers of two from ``min_size`` to ``max_size``, as nccl-tests' ``-f 2``."""
    sizes = []
    size = min_size
    while size <= max_size:
        sizes.append(size)
        size *= 2
    return tuple(sizes)


@dataclass(frozen=True)
class PreflightOptions:
    backend: Backend = Backend.AUTO
    #: None = detect (see :func:`detect_interconnect`).
    interconnect: Interconnect | None = None
    #: None = the interconnect's default floor.
    min_busbw_gbps: float | None = None
    min_size: int = DEFAULT_MIN_SIZE
    max_size: int = DEFAULT_MAX_SIZE
    iters: int = DEFAULT_ITERS
    timeout: float = DEFAULT_TIMEOUT
    json_path: Path | None = None
    #: Print the table (local rank 0 only).
    show: bool = True

    def __post_init__(self) -> None:
        if self.min_size < 4 or self.max_size < self.min_size:
            raise PreflightConfigError(
                f"message sizes must satisfy 4 <= min ({self.min_size}) <= max ({self.max_size})"
            )
        if self.iters < 1:
            raise PreflightConfigError(f"--iters must be >= 1, got {self.iters}")
        if not math.isfinite(self.timeout) or self.timeout <= 0:
            raise PreflightConfigError(f"--timeout must be > 0 seconds, got {self.timeout}")
        if self.min_busbw_gbps is not None and self.min_busbw_gbps < 0:
            raise PreflightConfigError(f"--min-busbw must be >= 0, got {self.min_busbw_gbps}")

    def floor_for(self, interconnect: Interconnect) -> float:
        if self.min_busbw_gbps is not None:
            return self.min_busbw_gbps
        return DEFAULT_MIN_BUSBW_GBPS[interconnect]

    def worker_args(self, json_path: Path | None) -> list[str]:
        """The command-line options that reproduce these options in a worker."""
        args = [
            "--backend",
            self.backend.value,
            "--min-size",
            str(self.min_size),
            "--max-size",
            str(self.max_size),
            "--iters",
            str(self.iters),
            "--timeout",
            f"{self.timeout:g}",
        ]
        if self.interconnect is not None:
            args += ["--interconnect", self.interconnect.value]
        if self.min_busbw_gbps is not None:
            args += ["--min-busbw", f"{self.min_busbw_gbps:g}"]
        if json_path is not None:
            args += ["--json", str(json_path)]
        if not self.show:
            args.append("--quiet")
        return args


@dataclass(frozen=True)
class PreflightResult:
    """The verdict of one preflight, identical on every rank but for timings."""

    passed: bool
    backend: str
    world_size: int
    interconnect: Interconnect
    min_busbw_gbps: float
    checks: tuple[CheckResult, ...]
    bandwidth: tuple[BandwidthSample, ...] = ()
    #: Sizes the sweep left out to stay within the timeout: not measured, not "fine".
    skipped_sizes: tuple[int, ...] = ()
    #: Seconds inside the worker, rendezvous included.
    seconds: float = 0.0
    #: Seconds the launcher waited, process and torch start included (None in a worker).
    cost_seconds: float | None = None

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(check for check in self.checks if check.failed)

    @property
    def peak_busbw_gbps(self) -> float | None:
        return max((s.busbw_gbps for s in self.bandwidth), default=None)

    def verdict(self) -> Verdict | None:
        """NCCL_ERROR (retryable: a bad node should be replaced) when a check failed."""
        if self.passed:
            return None
        reasons = "; ".join(f"{c.name}: {c.detail}" for c in self.failures) or "no result"
        return Verdict(TerminationReason.NCCL_ERROR, f"NCCL preflight failed: {reasons}")

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "backend": self.backend,
            "world_size": self.world_size,
            "interconnect": self.interconnect.value,
            "min_busbw_gbps": self.min_busbw_gbps,
            "peak_busbw_gbps": self.peak_busbw_gbps,
            "checks": [
                {"name": c.name, "status": c.status.value, "detail": c.detail, "seconds": c.seconds}
                for c in self.checks
            ],
            "bandwidth": [
                {
                    "size_bytes": s.size_bytes,
                    "iters": s.iters,
                    "seconds": s.seconds,
                    "algbw_gbps": s.algbw_gbps,
                    "busbw_gbps": s.busbw_gbps,
                }
                for s in self.bandwidth
            ],
            "skipped_sizes": list(self.skipped_sizes),
            "seconds": self.seconds,
            "cost_seconds": self.cost_seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PreflightResult:
        """Raises KeyError/TypeError/ValueError on a malformed document."""
        return cls(
            passed=bool(data["passed"]),
            backend=str(data["backend"]),
            world_size=int(data["world_size"]),
            interconnect=Interconnect(data["interconnect"]),
            min_busbw_gbps=float(data["min_busbw_gbps"]),
            checks=tuple(
                CheckResult(
                    str(c["name"]), CheckStatus(c["status"]), str(c["detail"]), float(c["seconds"])
                )
                for c in data["checks"]
            ),
            bandwidth=tuple(
                BandwidthSample(
                    int(s["size_bytes"]),
                    int(s["iters"]),
                    float(s["seconds"]),
                    float(s["algbw_gbps"]),
                    float(s["busbw_gbps"]),
                )
                for s in data["bandwidth"]
            ),
            skipped_sizes=tuple(int(size) for size in data["skipped_sizes"]),
            seconds=float(data["seconds"]),
            cost_seconds=None if data.get("cost_seconds") is None else float(data["cost_seconds"]),
        )


def _format_size(size: int) -> str:
    for unit, scale in (("GiB", 1024 * MIB), ("MiB", MIB), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def format_table(result: PreflightResult) -> str:
    """nccl-tests-like report: the checks, then one row per message size."""
    lines = [
        f"NCCL preflight: backend {result.backend}, {result.world_size} ranks, "
        f"interconnect {result.interconnect.value} (busbw floor {result.min_busbw_gbps:g} GB/s)",
        f"  {'check':<12} {'status':<8} {'seconds':>8}  detail",
    ]
    for check in result.checks:
        lines.append(
            f"  {check.name:<12} {check.status.value:<8} {check.seconds:>8.3f}  {check.detail}"
        )
    if result.bandwidth or result.skipped_sizes:
        lines.append(
            f"  {'size':>10} {'bytes':>11} {'iters':>6} {'time(us)':>11} "
            f"{'algbw(GB/s)':>12} {'busbw(GB/s)':>12}"
        )
        for s in result.bandwidth:
            lines.append(
                f"  {_format_size(s.size_bytes):>10} {s.size_bytes:>11} {s.iters:>6} "
                f"{s.seconds * 1e6:>11.1f} {s.algbw_gbps:>12.3f} {s.busbw_gbps:>12.3f}"
            )
        for size in result.skipped_sizes:
            lines.append(f"  {_format_size(size):>10} {size:>11}  not measured (time budget)")
    status = "PASSED" if result.passed else "FAILED"
    cost = ""
    if result.cost_seconds is not None:
        cost = f"; cost {result.cost_seconds:.1f}s wall, process start included"
    lines.append(f"NCCL preflight {status} in {result.seconds:.1f}s inside the ranks{cost}")
    return "\n".join(lines)
