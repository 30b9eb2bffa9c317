"""The GPU monitor against a fake NVML: a real module object with pynvml's names and behaviour.

The fake keeps pynvml's contract: errors are ``NVMLError`` instances whose
``value`` is the NVML return code, ``nvmlEventSetWait_v2`` raises
``NVML_ERROR_TIMEOUT`` when no event is pending, handles are opaque objects.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import types
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

from devops.skypilot.common.termination import TerminationReason
from devops.skypilot.node.monitors.gpu import DEFAULT_IGNORED_XIDS, GpuMonitor
from tests.conftest import REPO

NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_GPU_IS_LOST = 15


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {
            NVML_ERROR_NOT_SUPPORTED: "Not Supported",
            NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
            NVML_ERROR_TIMEOUT: "Timeout",
            NVML_ERROR_GPU_IS_LOST: "GPU is lost",
        }.get(self.value, f"error {self.value}")


@dataclass
class FakeGpu:
    utilization: int = 50
    ecc_uncorrected: int | None = 0  # None = not supported
    lost: bool = False
    events_supported: bool = True


@dataclass(eq=False)
class Handle:
    index: int


@dataclass
class Event:
    device: Handle
    eventType: int
    eventData: int
    gpuInstanceId: int = 0
    computeInstanceId: int = 0


@dataclass
class FakeDriver:
    gpus: list[FakeGpu]
    init_error: int | None = None
    pending: list[Event] = field(default_factory=list)
    registered: set[int] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)

    def xid(self, gpu: int, xid: int) -> None:
        if gpu in self.registered:
            self.pending.append(Event(Handle(gpu), 0x8, xid))


def fake_nvml(driver: FakeDriver) -> types.ModuleType:
    """A module object shaped like pynvml, backed by ``driver``."""
    module = types.ModuleType("fake_pynvml")
    constants = {
        "NVMLError": NVMLError,
        "NVML_ERROR_NOT_SUPPORTED": NVML_ERROR_NOT_SUPPORTED,
        "NVML_ERROR_TIMEOUT": NVML_ERROR_TIMEOUT,
        "NVML_ERROR_GPU_IS_LOST": NVML_ERROR_GPU_IS_LOST,
        "NVML_MEMORY_ERROR_TYPE_UNCORRECTED": 1,
        "NVML_VOLATILE_ECC": 0,
        "nvmlEventTypeXidCriticalError": 0x8,
    }
    for name, value in constants.items():
        setattr(module, name, value)

    def gpu(handle: Handle) -> FakeGpu:
        state = driver.gpus[handle.index]
        if state.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return state

    def nvmlInit() -> None:
        driver.calls.append("init")
        if driver.init_error is not None:
            raise NVMLError(driver.init_error)

    def nvmlShutdown() -> None:
        driver.calls.append("shutdown")

    def nvmlDeviceGetCount() -> int:
        return len(driver.gpus)

    def nvmlDeviceGetHandleByIndex(index: int) -> Handle:
        if driver.gpus[index].lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return Handle(index)

    def nvmlDeviceGetIndex(handle: Handle) -> int:
        return handle.index

    def nvmlDeviceGetUtilizationRates(handle: Handle) -> types.SimpleNamespace:
        return types.SimpleNamespace(gpu=gpu(handle).utilization, memory=0)

    def nvmlDeviceGetTotalEccErrors(handle: Handle, error_type: int, counter: int) -> int:
        assert (error_type, counter) == (1, 0), "uncorrected, volatile"
        count = gpu(handle).ecc_uncorrected
        if count is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return count

    def nvmlEventSetCreate() -> object:
        return object()

    def nvmlDeviceRegisterEvents(handle: Handle, types_: int, event_set: object) -> None:
        assert types_ == 0x8
        if not gpu(handle).events_supported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        driver.registered.add(handle.index)

    def nvmlEventSetWait_v2(event_set: object, timeout_ms: int) -> Event:
        assert timeout_ms == 0, "the monitor must never block"
        if not driver.pending:
            raise NVMLError(NVML_ERROR_TIMEOUT)
        return driver.pending.pop(0)

    def nvmlEventSetFree(event_set: object) -> None:
        driver.calls.append("free")

    for function in (
        nvmlInit,
        nvmlShutdown,
        nvmlDeviceGetCount,
        nvmlDeviceGetHandleByIndex,
        nvmlDeviceGetIndex,
        nvmlDeviceGetUtilizationRates,
        nvmlDeviceGetTotalEccErrors,
        nvmlEventSetCreate,
        nvmlDeviceRegisterEvents,
        nvmlEventSetWait_v2,
        nvmlEventSetFree,
    ):
        setattr(module, function.__name__, function)
    return module


def monitor_for(
    driver: FakeDriver,
    idle_timeout: float | None = None,
    ignored_xids: Iterable[int] = DEFAULT_IGNORED_XIDS,
) -> GpuMonitor:
    monitor = GpuMonitor.create(
        nvml=fake_nvml(driver), idle_timeout=idle_timeout, ignored_xids=ignored_xids
    )
    assert monitor is not None
    monitor.start(0.0)
    return monitor


def test_healthy_gpus_give_no_verdict() -> None:
    driver = FakeDriver([FakeGpu(), FakeGpu()])
    monitor = monitor_for(driver, idle_timeout=60)
    assert [monitor.check(t) for t in (1.0, 2.0, 100.0)] == [None, None, None]
    monitor.stop()
    monitor.stop()
    assert driver.calls.count("shutdown") == 1 and "free" in driver.calls


def test_an_xid_is_a_cuda_error_naming_the_gpu() -> None:
    driver = FakeDriver([FakeGpu(), FakeGpu()])
    monitor = monitor_for(driver)
    assert monitor.check(1.0) is None
    driver.xid(1, 79)
    verdict = monitor.check(2.0)
    assert verdict is not None and verdict.reason is TerminationReason.CUDA_ERROR
    assert verdict.detail == "GPU 1: Xid 79 (GPU has fallen off the bus)"
    assert verdict.reason.retryable


def test_application_xids_are_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    driver = FakeDriver([FakeGpu()])
    monitor = monitor_for(driver)
    driver.xid(0, 31)  # a page fault: the program's bug, its own exit says so
    driver.xid(0, 45)  # follows any killed CUDA process
    with caplog.at_level(logging.WARNING):
        assert monitor.check(1.0) is None
    assert "Xid 31" in caplog.text and "Xid 45" in caplog.text
    driver.xid(0, 48)
    verdict = monitor.check(2.0)
    assert verdict is not None and "GPU 0: Xid 48 (double-bit ECC error)" in verdict.detail


def test_ignored_xids_are_configurable() -> None:
    driver = FakeDriver([FakeGpu()])
    monitor = monitor_for(driver, ignored_xids=())
    driver.xid(0, 31)
    verdict = monitor.check(1.0)
    assert verdict is not None and "Xid 31" in verdict.detail


def test_new_double_bit_ecc_errors_are_a_cuda_error() -> None:
    driver = FakeDriver([FakeGpu(ecc_uncorrected=2), FakeGpu(ecc_uncorrected=0)])
    monitor = monitor_for(driver)  # errors from before the start are not this job's
    assert monitor.check(1.0) is None
    driver.gpus[1].ecc_uncorrected = 1
    verdict = monitor.check(2.0)
    assert verdict is not None and verdict.reason is TerminationReason.CUDA_ERROR
    assert verdict.detail.startswith("GPU 1: 1 new uncorrected (double-bit) ECC error(s)")


def test_a_gpu_off_the_bus_is_found_even_without_ecc_or_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver = FakeDriver(
        [FakeGpu(), FakeGpu(ecc_uncorrected=None, events_supported=False), FakeGpu()]
    )
    with caplog.at_level(logging.WARNING):
        monitor = monitor_for(driver)
    assert "GPU 1: Xid events unavailable" in caplog.text
    assert monitor.check(1.0) is None
    driver.gpus[1].lost = True
    verdict = monitor.check(2.0)
    assert verdict is not None and verdict.reason is TerminationReason.CUDA_ERROR
    assert verdict.detail == "GPU 1 fell off the bus (GPU is lost)"


def test_a_gpu_lost_before_the_start_is_reported_at_the_first_check() -> None:
    driver = FakeDriver([FakeGpu(), FakeGpu(lost=True)])
    monitor = monitor_for(driver)
    verdict = monitor.check(1.0)
    assert verdict is not None and verdict.detail.startswith("GPU 1 fell off the bus")


def test_all_gpus_idle_for_the_limit_is_a_cuda_error() -> None:
    driver = FakeDriver([FakeGpu(utilization=0), FakeGpu(utilization=30)])
    monitor = monitor_for(driver, idle_timeout=600)
    assert monitor.check(10.0) is None  # one GPU busy: not idle
    driver.gpus[1].utilization = 0
    assert monitor.check(20.0) is None  # idle clock starts
    assert monitor.check(619.0) is None
    driver.gpus[0].utilization = 5  # a blip of work resets it
    assert monitor.check(620.0) is None
    driver.gpus[0].utilization = 0
    assert monitor.check(630.0) is None
    verdict = monitor.check(1230.0)
    assert verdict is not None and verdict.reason is TerminationReason.CUDA_ERROR
    assert "all 2 GPU(s) idle (0% utilization) for 600s" in verdict.detail


def test_idle_check_is_off_unless_asked() -> None:
    monitor = monitor_for(FakeDriver([FakeGpu(utilization=0)]))
    assert monitor.check(1.0) is None
    assert monitor.check(10_000.0) is None


def test_without_a_driver_it_disables_itself_with_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver = FakeDriver([FakeGpu()], init_error=NVML_ERROR_DRIVER_NOT_LOADED)
    with caplog.at_level(logging.INFO, logger="devops.skypilot.node.monitors.gpu"):
        assert GpuMonitor.create(nvml=fake_nvml(driver)) is None
    assert [r.getMessage() for r in caplog.records] == [
        "GPU monitor disabled: NVML unavailable (Driver Not Loaded)"
    ]


def test_without_gpus_it_disables_itself() -> None:
    driver = FakeDriver([])
    assert GpuMonitor.create(nvml=fake_nvml(driver)) is None
    assert driver.calls == ["init", "shutdown"]


def test_the_real_pynvml_on_a_machine_without_a_driver() -> None:
    """This machine has nvidia-ml-py but no GPU: the real library must say so, not raise."""
    pytest.importorskip("pynvml")
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
        "from devops.skypilot.node.monitors.gpu import GpuMonitor\n"
        "print('monitor:', GpuMonitor.create())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    if "GPU monitor:" in out.stdout:
        pytest.skip("this machine has a GPU")
    assert "GPU monitor disabled: NVML unavailable" in out.stdout
    assert "monitor: None" in out.stdout


def test_without_nvidia_ml_py_it_disables_itself() -> None:
    code = (
        "import logging, sys\n"
        "sys.modules['pynvml'] = None  # what an uninstalled package looks like to import\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
        "from devops.skypilot.node.monitors.gpu import GpuMonitor\n"
        "print('monitor:', GpuMonitor.create())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "GPU monitor disabled: nvidia-ml-py (pynvml) is not installed",
        "monitor: None",
    ]
