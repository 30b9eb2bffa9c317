"""The log-pattern table against real fatal messages and real false positives.

Positive cases are messages as PyTorch (``ProcessGroupNCCL.cpp``), NCCL and the
NVIDIA driver / nvidia-smi print them, taken from their sources and from public
issue threads (PyTorch, NCCL, Megatron-LM, LlamaFactory, sglang, vLLM, BasicSR,
OFA, NVIDIA open-gpu-kernel-modules), lightly shortened where a line runs on.
Negative cases are text a healthy job prints: health summaries, NCCL INFO/WARN
chatter, a recovered out-of-memory error, random bytes.
"""

from __future__ import annotations

import random

import pytest

from devops.skypilot.common.termination import TerminationReason as R
from devops.skypilot.common.values import ConfigError
from devops.skypilot.node.monitors.log_patterns import (
    DEFAULT_PATTERNS,
    EXPLAIN_WINDOW,
    Action,
    LogPatternMonitor,
    patterns_from_config,
)

#: Certainly fatal: the job is stopped at the first such line.
STOP = [
    # torch >= 2.2 watchdog, with the glog prefix
    (
        "[rank1]:[E626 06:24:44.903881913 ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught "
        "collective operation timeout: WorkNCCL(SeqNum=808, OpType=ALLREDUCE, NumelIn=9801523, "
        "NumelOut=9801523, Timeout(ms)=600000) ran for 600020 milliseconds before timing out.",
        R.NCCL_ERROR,
    ),
    # torch 1.x
    (
        "[E ProcessGroupNCCL.cpp:737] [Rank 1] Watchdog caught collective operation timeout: "
        "WorkNCCL(SeqNum=469508, OpType=ALLREDUCE, Timeout(ms)=1800000) ran for 1802212 "
        "milliseconds before timing out.",
        R.NCCL_ERROR,
    ),
    # the exception text torch raises from the watchdog thread
    (
        "  what():  [PG ID 0 PG GUID 0(default_pg) Rank 3] Process group watchdog thread "
        "terminated with exception: [Rank 3] Watchdog caught collective operation timeout: "
        "WorkNCCL(SeqNum=1, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran "
        "for 600062 milliseconds before timing out.",
        R.NCCL_ERROR,
    ),
    (
        "[rank1]:[E626 06:24:44.906457629 ProcessGroupNCCL.cpp:1785] [PG ID 0 PG GUID "
        "0(default_pg) Rank 1] Exception (either an error or timeout) detected by watchdog at "
        "work: 808, last enqueued NCCL work: 811, last completed NCCL work: 807.",
        R.NCCL_ERROR,
    ),
    (
        "[rank1]:[E1123 ProcessGroupNCCL.cpp:1834] [PG 0 Rank 1]  failure detected by watchdog "
        "at work sequence id: 7 PG status: last enqueued work: 7, last completed work: 6",
        R.NCCL_ERROR,
    ),
    (
        "[rank4]:[E1016 03:31:38.929241154 ProcessGroupNCCL.cpp:621] [Rank 4] Some NCCL "
        "operations have failed or timed out. Due to the asynchronous nature of CUDA kernels, "
        "subsequent GPU operations might run on corrupted/incomplete data.",
        R.NCCL_ERROR,
    ),
    (
        "[rank4]:[E1016 03:31:38.929246900 ProcessGroupNCCL.cpp:627] [Rank 4] To avoid data "
        "inconsistency, we are taking the entire process down.",
        R.NCCL_ERROR,
    ),
    (
        "[E ProcessGroupNCCL.cpp:414] Some NCCL operations have failed or timed out. Due to the "
        "asynchronous nature of CUDA kernels, subsequent GPU operations might run on "
        "corrupted/incomplete data. To avoid this inconsistency, we are taking the entire "
        "process down.",
        R.NCCL_ERROR,
    ),
    (
        "[rank1]:[E1111 17:10:53] [PG ID 0 PG GUID 0(default_pg) Rank 1] ProcessGroupNCCL's "
        "watchdog got stuck for 480 seconds without making progress in monitoring enqueued "
        "collectives. This typically indicates a NCCL/CUDA API (e.g., CudaEventDestroy) hang",
        R.NCCL_ERROR,
    ),
    (
        "[PG 0 Rank 2] Heartbeat monitor timed out! Process will be terminated after dumping "
        "debug info. workMetaList_.size()=1",
        R.NCCL_ERROR,
    ),
    (
        "[PG ID 0 PG GUID 0(default_pg) Rank 0] Received a dump signal due to a collective "
        "timeout from this local rank and we will try our best to dump the debug info. Last "
        "enqueued NCCL work: 5, last completed NCCL work: 4.",
        R.NCCL_ERROR,
    ),
    # sticky CUDA errors: every later CUDA call of the process fails
    ("RuntimeError: CUDA error: an illegal memory access was encountered", R.CUDA_ERROR),
    ("torch.AcceleratorError: CUDA error: an illegal memory access was encountered", R.CUDA_ERROR),
    (
        "terminate called after throwing an instance of 'c10::Error'\n  what():  CUDA error: an "
        "illegal memory access was encountered",
        R.CUDA_ERROR,
    ),
    (
        "[2026-08-31 20:31:24] server00:1055210:1055845 [2] misc/strongstream.cc:399 NCCL WARN "
        "Cuda failure 'an illegal memory access was encountered'",
        R.CUDA_ERROR,
    ),
    (
        "enqueue.cc:1556 NCCL WARN Cuda failure 700 'an illegal memory access was encountered'",
        R.CUDA_ERROR,
    ),
    ("RuntimeError: Triton Error [CUDA]: an illegal memory access was encountered", R.CUDA_ERROR),
    ("RuntimeError: CUDA error: uncorrectable ECC error encountered", R.CUDA_ERROR),
    ("torch.AcceleratorError: CUDA error: uncorrectable ECC error encountered", R.CUDA_ERROR),
    ("RuntimeError: CUDA error: unspecified launch failure", R.CUDA_ERROR),
    # the driver (dmesg / journal, when a job tails it)
    (
        "May 18 19:02:39 kernel: NVRM: Xid (PCI:0000:2b:00): 79, GPU has fallen off the bus.",
        R.CUDA_ERROR,
    ),
    ("NVRM: Xid (PCI:0000:8a:00): 79, pid=..., GPU has fallen off the bus.", R.CUDA_ERROR),
    (
        "[ 812.331] NVRM: Xid (PCI:0000:c1:00): 119, pid=3190, name=python, Timeout after 6s of "
        "waiting for RPC response from GPU0 GSP! Expected function 76 (GSP_RM_CONTROL)",
        R.CUDA_ERROR,
    ),
    (
        "NVRM: Xid (PCI:0000:3b:00): 48, pid=2731, name=python, An uncorrectable double bit error",
        R.CUDA_ERROR,
    ),
    ("NVRM: Xid (PCI:0000:3b:00): 95, pid=2731, name=python, Uncontained: FBHUB", R.CUDA_ERROR),
    (
        "Jan 18 11:38:05 localhost kernel: [ 269.516977] NVRM: GPU at 0000:01:00.0 has "
        "fallen off the bus.",
        R.CUDA_ERROR,
    ),
    ("May 18 19:02:39 kernel: NVRM: GPU 0000:2b:00.0: GPU has fallen off the bus.", R.CUDA_ERROR),
    # nvidia-smi / NVML once the GPU is gone
    (
        "Unable to determine the device handle for GPU 0000:02:00.0: GPU is lost. Reboot the "
        "system to recover this GPU",
        R.CUDA_ERROR,
    ),
    (
        "Unable to determine the device handle for GPU0000:03:00.0: GPU is lost.  Reboot",
        R.CUDA_ERROR,
    ),
    ("pynvml.NVMLError_GpuIsLost: GPU is lost", R.CUDA_ERROR),
]

#: Often fatal but survivable: never stops a live job, explains a failure.
EXPLAIN = [
    (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a "
        "total capacity of 79.15 GiB of which 3.12 MiB is free.",
        R.CUDA_ERROR,
    ),
    (
        "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.90 GiB total "
        "capacity; 13.20 GiB already allocated; 1.02 GiB free; 14.00 GiB reserved in total)",
        R.CUDA_ERROR,
    ),
    ("RuntimeError: CUDA error: out of memory", R.CUDA_ERROR),
    (
        "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/"
        "ProcessGroupNCCL.cpp:1970, unhandled system error (run with NCCL_DEBUG=INFO for "
        "details), NCCL version 2.19.3",
        R.NCCL_ERROR,
    ),
    (
        "RuntimeError: NCCL error in: /opt/pytorch/pytorch/torch/csrc/distributed/c10d/"
        "ProcessGroupNCCL.cpp:1275, unhandled cuda error, NCCL version 2.14.3",
        R.NCCL_ERROR,
    ),
    ("  what():  NCCL error: unhandled system error, NCCL version 2.10.3", R.NCCL_ERROR),
    (
        "ncclSystemError: System call (e.g. socket, malloc) or external library call failed or "
        "device error.",
        R.NCCL_ERROR,
    ),
    (
        "ncclRemoteError: A call failed possibly due to a network error or a remote process "
        "exiting prematurely.",
        R.NCCL_ERROR,
    ),
    ("ncclInternalError: Internal check failed.", R.NCCL_ERROR),
    ("ncclUnhandledCudaError: Call to CUDA function failed.", R.NCCL_ERROR),
    ("torch.distributed.DistBackendError: NCCL communicator was aborted on rank 1.", R.NCCL_ERROR),
    (
        "kp-ddp-worker-0:3468:3905 [4] ib_plugin.c:1615 NCCL WARN NET/IB : Got completion from "
        "peer 10.216.210.236<54862> with status=12 opcode=0 len=0 vendor err 129 (Recv) "
        "localGid fd00:1148:9000:5000:4:200:3:ff22",
        R.NCCL_ERROR,
    ),
    (
        "H100-2:19989:20082 [1] transport/net_ib.cc:1295 NCCL WARN NET/IB : Got completion "
        "from peer fe80::966d:ae03:8b:df78%ib0<53249> with error 4, opcode 32564, len 32564, "
        "vendor err 81 (Send)",
        R.NCCL_ERROR,
    ),
    ("node:812:901 [0] include/alloc.h:99 NCCL WARN Cuda failure 'out of memory'", R.CUDA_ERROR),
    (
        "NVRM: Xid (PCI:0000:10:1c): 63, pid=1896, Row Remapper: New row marked for remapping, "
        "reset gpu to activate.",
        R.CUDA_ERROR,
    ),
    ("NVRM: Xid (0000:01:00): 13, Graphics SM Warp Exception on (GPC 0, TPC 0)", R.CUDA_ERROR),
    ("Unable to determine the device handle for GPU 0000:0B:00.0: Unknown Error", R.CUDA_ERROR),
    ("ECC: uncorrectable ECC error encountered on device 3", R.CUDA_ERROR),
]

#: What healthy jobs print: none of it may stop or explain anything.
HEALTHY = [
    'echo "0 Xid errors in the last 24h, ECC ok"',
    "gpu health: 0 Xid errors, 0 uncorrectable ECC errors, ECC ok, NVLink ok",
    "Xid: none",
    "Xidian University dataset loaded: 12,000 images",
    "step 10 loss 0.25 lr 3e-4 tokens/s 12345",
    "batch size finder: trying 512 ... CUDA out of memory, trying 256",
    "Caught torch.cuda.OutOfMemoryError; halving the batch size",
    "node:812:901 [0] NCCL INFO Channel 00/02 :    0   1   2   3",
    "node:812:901 [0] NCCL INFO NET/Plugin: Could not find: libnccl-net.so. Using internal "
    "network plugin.",
    "node:812:901 [0] NCCL WARN NET/Plugin : Plugin load (libnccl-net.so) returned 2 : "
    "libnccl-net.so: cannot open shared object file: No such file or directory",
    "checked 0 NCCL errors and 0 timeouts",
    "no NCCL error detected in the preflight",
    'export TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC=3600  # ("watchdog got stuck for 480 seconds '
    'without making progress")',
    "TORCH_NCCL_ENABLE_MONITORING=0 turns the heartbeat monitor off",
    "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0b11d014-1685-04bd-26ed-5fc0bc1c44ae)",
    "CUDA error checking enabled (CUDA_LAUNCH_BLOCKING=1)",
    "Watchdog timeout set to 600 s",
]


def _monitor_after(*lines: str) -> LogPatternMonitor:
    monitor = LogPatternMonitor()
    for line in lines:
        for part in line.split("\n"):
            monitor.observe_line(part)
    return monitor


@pytest.mark.parametrize(("line", "reason"), STOP)
def test_certainly_fatal_lines_stop_the_job(line: str, reason: R) -> None:
    monitor = _monitor_after(line)
    verdict = monitor.check(0.0)
    assert verdict is not None and verdict.reason is reason
    assert line.split("\n")[-1].strip()[:100] in verdict.detail
    assert monitor.explain() == verdict


@pytest.mark.parametrize(("line", "reason"), EXPLAIN)
def test_survivable_lines_only_explain(line: str, reason: R) -> None:
    monitor = _monitor_after(line)
    assert monitor.check(0.0) is None
    verdict = monitor.explain()
    assert verdict is not None and verdict.reason is reason
    assert line.strip()[:100] in verdict.detail


@pytest.mark.parametrize("line", HEALTHY)
def test_healthy_output_matches_nothing(line: str) -> None:
    monitor = _monitor_after(line)
    assert (monitor.check(0.0), monitor.explain()) == (None, None)


def test_random_bytes_match_nothing() -> None:
    noise = random.Random(13).randbytes(2 * 2**20)
    monitor = _monitor_after(*(chunk.decode("utf-8", "replace") for chunk in noise.split(b"\n")))
    assert (monitor.check(0.0), monitor.explain()) == (None, None)


def test_a_recovered_oom_explains_only_a_failure_close_after_it() -> None:
    """A batch-size finder catches an OOM early; a crash much later is not about it."""
    monitor = _monitor_after(EXPLAIN[0][0])
    for step in range(EXPLAIN_WINDOW):
        monitor.observe_line(f"step {step} loss 0.1")
    assert monitor.check(0.0) is None
    assert monitor.explain() is not None  # still within the window
    monitor.observe_line("ValueError: bad batch")
    assert monitor.explain() is None


def test_the_latest_explanation_wins_and_a_stop_beats_it() -> None:
    monitor = _monitor_after(EXPLAIN[0][0], EXPLAIN[3][0])
    explained = monitor.explain()
    assert explained is not None and explained.reason is R.NCCL_ERROR
    monitor.observe_line(STOP[-1][0])
    monitor.observe_line(EXPLAIN[0][0])
    stopped = monitor.check(0.0)
    assert stopped is not None and stopped.reason is R.CUDA_ERROR
    assert monitor.explain() == stopped


def test_detail_is_bounded() -> None:
    monitor = _monitor_after("RuntimeError: CUDA error: out of memory " + "x" * 10_000)
    verdict = monitor.explain()
    assert verdict is not None and len(verdict.detail) < 600


@pytest.mark.parametrize(
    "line",
    [STOP[0][0], STOP[3][0], STOP[4][0]],
)
def test_watchdog_lines_name_the_flight_recorder_dump(line: str) -> None:
    env = {"TORCH_NCCL_DEBUG_INFO_TEMP_FILE": "/state/nccl-trace/rank_"}
    monitor = LogPatternMonitor(env=env)
    monitor.observe_line(line)
    verdict = monitor.check(0.0)
    assert verdict is not None and verdict.reason is R.NCCL_ERROR
    assert "(flight recorder dump: /state/nccl-trace/rank_1)" in verdict.detail


def test_watchdog_lines_without_a_rank_guess_no_dump() -> None:
    monitor = LogPatternMonitor(env={"TORCH_NCCL_DEBUG_INFO_TEMP_FILE": "/x/rank_"})
    monitor.observe_line(STOP[8][0].split("] ", 1)[1])
    verdict = monitor.check(0.0)
    assert verdict is not None and "flight recorder" not in verdict.detail


def test_every_default_entry_is_exercised_by_a_real_message() -> None:
    """A table entry no real message above matches is dead or mistyped."""
    lines = [part for line, _ in STOP + EXPLAIN for part in line.split("\n")]
    unused = [e.pattern.pattern for e in DEFAULT_PATTERNS if not any(e.search(x) for x in lines)]
    assert not unused


def test_configured_patterns_come_first_and_may_only_explain() -> None:
    section = {
        "defaults": True,
        "match": [
            {"pattern": "DataLoader worker .* killed", "reason": "job_failed"},
            {"pattern": "loss is nan", "reason": "job_failed", "action": "explain"},
        ],
    }
    patterns = patterns_from_config(section)
    assert len(patterns) == len(DEFAULT_PATTERNS) + 2
    assert (patterns[0].reason, patterns[0].action) == (R.JOB_FAILED, Action.STOP)
    assert patterns[1].action is Action.EXPLAIN
    assert patterns_from_config({"defaults": False, "match": []}) == ()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"match": [{"pattern": "("}]}, "reason must be one of"),
        ({"match": [{"pattern": "(", "reason": "cuda_error"}]}, "bad regular expression"),
        ({"match": [{"reason": "cuda_error"}]}, "needs a string `pattern`"),
        ({"match": {"pattern": "x"}}, "must be an array"),
        ({"defaults": "yes"}, "true or false"),
        (
            {"match": [{"pattern": "x", "reason": "cuda_error", "action": "kill"}]},
            "stop or explain",
        ),
    ],
)
def test_bad_pattern_config(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        patterns_from_config(section)
