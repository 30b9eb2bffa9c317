"""GPU health through NVML: Xid errors, double-bit ECC errors, a GPU fallen off the bus, idle GPUs.

Each is a :attr:`TerminationReason.CUDA_ERROR` (retryable: the node is bad,
another allocation will do) with the GPU index in the detail. Where the driver
does not support a query (ECC on consumer boards, events in some containers)
that part is off for that GPU, logged once; the rest keeps working.

NVML comes from the ``nvidia-ml-py`` extra (module ``pynvml``), imported only
in :meth:`GpuMonitor.create`; without it, or without a driver, the monitor is
not created and one line says why. Tests hand in a fake module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from devops.skypilot.common.termination import TerminationReason, Verdict
from devops.skypilot.node.monitors.base import Monitor
from devops.skypilot.node.monitors.setup import MonitorSetup

logger = logging.getLogger(__name__)

#: What the common Xids mean (NVIDIA's Xid catalogue), for the detail.
XID_DESCRIPTIONS: Mapping[int, str] = {
    13: "graphics engine exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    45: "preemptive cleanup",
    48: "double-bit ECC error",
    61: "internal micro-controller breakpoint",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping",
    64: "ECC page retirement or row remapping failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}

#: Xids the application causes (a bad kernel, an illegal address) or that follow
#: any killed CUDA process (45, our own stop included): the command's own exit
#: says what happened, and replacing the node would not help.
DEFAULT_IGNORED_XIDS: frozenset[int] = frozenset({13, 31, 43, 45})

#: Events drained per check at most: a storm must not stall the runner's loop.
_MAX_EVENTS_PER_CHECK = 64


@dataclass
class _Gpu:
    index: int
    handle: Any
    #: Uncorrected volatile ECC count at the start; None = not supported.
    ecc_baseline: int | None = None
    #: Why NVML lost this GPU, once it has.
    lost: str | None = None


class GpuMonitor(Monitor):
    """NVML checks on every GPU of the node. Never sleeps: events are polled with a 0 ms wait."""

    interval = 2.0

    def __init__(
        self,
        nvml: ModuleType,
        gpus: Sequence[_Gpu],
        *,
        event_set: Any | None,
        idle_timeout: float | None,
        ignored_xids: Iterable[int],
    ) -> None:
        self._nvml = nvml
        self._gpus = list(gpus)
        self._event_set = event_set
        self._idle_timeout = idle_timeout if idle_timeout and idle_timeout > 0 else None
        self._ignored_xids = frozenset(ignored_xids)
        self._idle_since: float | None = None
        self._warned: set[tuple[int, str]] = set()
        self._closed = False

    @classmethod
    def from_setup(cls, setup: MonitorSetup) -> GpuMonitor | None:
        return cls.create(idle_timeout=setup.config.gpu_idle_timeout or None)

    @classmethod
    def create(
        cls,
        *,
        idle_timeout: float | None = None,
        ignored_xids: Iterable[int] = DEFAULT_IGNORED_XIDS,
        nvml: ModuleType | None = None,
    ) -> GpuMonitor | None:
        """A monitor over every GPU NVML sees, or None (one log line) when there is none.

        ``idle_timeout``: seconds all GPUs may sit at 0 % utilization while the
        command runs; None or 0 = not checked.
        """
        if nvml is None:
            try:
                import pynvml
            except ImportError:
                logger.info("GPU monitor disabled: nvidia-ml-py (pynvml) is not installed")
                return None
            nvml = pynvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            logger.info("GPU monitor disabled: NVML unavailable (%s)", exc)
            return None
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            logger.info("GPU monitor disabled: NVML cannot count GPUs (%s)", exc)
            nvml.nvmlShutdown()
            return None
        if count == 0:
            logger.info("GPU monitor disabled: NVML sees no GPU")
            nvml.nvmlShutdown()
            return None
        gpus = [_open_gpu(nvml, index) for index in range(count)]
        event_set = _register_xid_events(nvml, gpus)
        logger.info(
            "GPU monitor: %d GPU(s), Xid events %s, idle timeout %s",
            count,
            "on" if event_set is not None else "off",
            f"{idle_timeout:g}s" if idle_timeout else "off",
        )
        return cls(
            nvml, gpus, event_set=event_set, idle_timeout=idle_timeout, ignored_xids=ignored_xids
        )

    def start(self, now: float) -> None:
        """Baselines are per attempt: ECC errors from before this command are not its problem."""
        self._idle_since = None
        for gpu in self._gpus:
            if gpu.lost is None:
                gpu.ecc_baseline = self._ecc_count(gpu)

    def check(self, now: float) -> Verdict | None:
        # Utilization is read every check: it is the probe that finds a lost GPU
        # even where ECC counters and events are not supported.
        readings = [self._utilization(gpu) for gpu in self._gpus if gpu.lost is None]
        problems = [*self._xids(), *self._ecc(), *self._lost()]
        if not problems:
            idle = self._idle(now, readings)
            problems = [idle] if idle else []
        if not problems:
            return None
        return Verdict(TerminationReason.CUDA_ERROR, "; ".join(problems[:4]))

    def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        nvml = self._nvml
        try:
            if self._event_set is not None:
                nvml.nvmlEventSetFree(self._event_set)
            nvml.nvmlShutdown()
        except nvml.NVMLError as exc:
            logger.debug("NVML shutdown: %s", exc)

    # ------------------------------------------------------------------ checks

    def _warn_once(self, gpu: int, what: str, exc: Exception) -> None:
        if (gpu, what) not in self._warned:
            self._warned.add((gpu, what))
            logger.warning("GPU %d: %s unavailable (%s); not checked", gpu, what, exc)

    def _mark_lost(self, gpu: _Gpu, exc: Exception) -> None:
        if gpu.lost is None:
            gpu.lost = f"GPU {gpu.index} fell off the bus ({exc})"

    def _is_lost(self, exc: Exception) -> bool:
        return bool(getattr(exc, "value", None) == self._nvml.NVML_ERROR_GPU_IS_LOST)

    def _ecc_count(self, gpu: _Gpu) -> int | None:
        nvml = self._nvml
        try:
            return int(
                nvml.nvmlDeviceGetTotalEccErrors(
                    gpu.handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC
                )
            )
        except nvml.NVMLError as exc:
            if self._is_lost(exc):
                self._mark_lost(gpu, exc)
            else:
                self._warn_once(gpu.index, "ECC counters", exc)
            return None

    def _lost(self) -> list[str]:
        return [gpu.lost for gpu in self._gpus if gpu.lost is not None]

    def _ecc(self) -> list[str]:
        problems = []
        for gpu in self._gpus:
            if gpu.lost is not None or gpu.ecc_baseline is None:
                continue
            count = self._ecc_count(gpu)
            if count is not None and count > gpu.ecc_baseline:
                problems.append(
                    f"GPU {gpu.index}: {count - gpu.ecc_baseline} new uncorrected (double-bit) "
                    f"ECC error(s), volatile count {count}"
                )
        return problems

    def _event_gpu(self, device: Any) -> str:
        nvml = self._nvml
        try:
            return str(int(nvml.nvmlDeviceGetIndex(device)))
        except nvml.NVMLError:
            return "?"

    def _xids(self) -> list[str]:
        nvml = self._nvml
        if self._event_set is None:
            return []
        problems = []
        for _ in range(_MAX_EVENTS_PER_CHECK):
            try:
                event = nvml.nvmlEventSetWait_v2(self._event_set, 0)
            except nvml.NVMLError as exc:
                if getattr(exc, "value", None) != nvml.NVML_ERROR_TIMEOUT:
                    self._warn_once(-1, "Xid events", exc)
                break
            if not int(event.eventType) & nvml.nvmlEventTypeXidCriticalError:
                continue
            xid = int(event.eventData)
            gpu = self._event_gpu(event.device)
            described = XID_DESCRIPTIONS.get(xid, "see NVIDIA's Xid catalogue")
            if xid in self._ignored_xids:
                logger.warning(
                    "GPU %s: Xid %d (%s) ignored: application-level", gpu, xid, described
                )
                continue
            problems.append(f"GPU {gpu}: Xid {xid} ({described})")
        return problems

    def _utilization(self, gpu: _Gpu) -> int | None:
        nvml = self._nvml
        try:
            return int(nvml.nvmlDeviceGetUtilizationRates(gpu.handle).gpu)
        except nvml.NVMLError as exc:
            if self._is_lost(exc):
                self._mark_lost(gpu, exc)
            else:
                self._warn_once(gpu.index, "utilization", exc)
            return None

    def _idle(self, now: float, readings: Sequence[int | None]) -> str | None:
        """All GPUs at 0 % for ``idle_timeout``; an unknown reading neither counts nor resets."""
        if self._idle_timeout is None or any(reading is None for reading in readings):
            return None
        if any(readings):
            self._idle_since = None
            return None
        if self._idle_since is None:
            self._idle_since = now
        idle_for = now - self._idle_since
        if idle_for < self._idle_timeout:
            return None
        return (
            f"all {len(self._gpus)} GPU(s) idle (0% utilization) for {idle_for:.0f}s "
            f"(limit {self._idle_timeout:g}s) while the command runs"
        )


def _open_gpu(nvml: ModuleType, index: int) -> _Gpu:
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
    except nvml.NVMLError as exc:
        # A handle that cannot be had at start is a GPU already gone: reported at the first check.
        return _Gpu(index, None, lost=f"GPU {index} fell off the bus (no NVML handle: {exc})")
    return _Gpu(index, handle)


def _register_xid_events(nvml: ModuleType, gpus: Sequence[_Gpu]) -> Any | None:
    """One event set for Xid events of every GPU that supports them, or None."""
    try:
        event_set = nvml.nvmlEventSetCreate()
    except nvml.NVMLError as exc:
        logger.warning("GPU monitor: Xid events unavailable (%s)", exc)
        return None
    registered = 0
    for gpu in gpus:
        if gpu.lost is not None:
            continue
        try:
            nvml.nvmlDeviceRegisterEvents(gpu.handle, nvml.nvmlEventTypeXidCriticalError, event_set)
            registered += 1
        except nvml.NVMLError as exc:
            logger.warning("GPU %d: Xid events unavailable (%s); not checked", gpu.index, exc)
    if registered == 0:
        nvml.nvmlEventSetFree(event_set)
        return None
    return event_set
