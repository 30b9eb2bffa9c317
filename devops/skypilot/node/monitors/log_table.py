"""The built-in table of fatal log lines: what each looks like, why, and what it may do.

A pattern matches the real shape of a message as PyTorch, NCCL or the NVIDIA
driver print it (a prefix, a fixed phrase, a number where the source puts one),
never a bare word: ``echo "0 Xid errors, ECC ok"`` or random bytes must not match.
Each entry also says what a match may do (``docs/log-patterns.md`` explains the
choice of each):

``stop``
    Certainly fatal: the process cannot go on (a sticky CUDA error, a GPU off the
    bus, torch's watchdog tearing the process down), so the job is stopped at
    once, before a hung rank wastes the cluster.
``explain``
    Often fatal, but a program may survive it (an out-of-memory error a batch-size
    finder catches, an NCCL error it retries): it never stops a live job; it only
    says why the command failed once it failed on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from devops.skypilot.common.termination import TerminationReason


class Action(str, Enum):
    STOP = "stop"
    """Stop the live job at the first match."""
    EXPLAIN = "explain"
    """Only explain an end after the command failed on its own."""


@dataclass(frozen=True)
class LogPattern:
    pattern: re.Pattern[str]
    reason: TerminationReason
    action: Action = Action.STOP
    #: Literals of which every match contains one: a line with none of them skips the
    #: regular expression (every line of a chatty job passes through every entry).
    needles: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        regex: str,
        reason: TerminationReason,
        action: Action = Action.STOP,
        needle: str | tuple[str, ...] = (),
    ) -> LogPattern:
        needles = (needle,) if isinstance(needle, str) else needle
        return cls(re.compile(regex), reason, action, needles)

    def search(self, line: str) -> re.Match[str] | None:
        for needle in self.needles:
            if needle in line:
                return self.pattern.search(line)
        return None if self.needles else self.pattern.search(line)


_CUDA, _NCCL = TerminationReason.CUDA_ERROR, TerminationReason.NCCL_ERROR
_STOP, _EXPLAIN = Action.STOP, Action.EXPLAIN

#: A PCI address as the driver prints it: ``PCI:0000:3b:00``, ``0000:01:00.0``.
_PCI = r"(?:PCI:)?[0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}(?:\.[0-7])?"
#: Xids after which the GPU is unusable until a reset (NVIDIA's Xid catalogue):
#: 48 double-bit ECC, 79 fallen off the bus, 95 uncontained ECC, 119/120 GSP
#: timeout/error, 140 unrecovered ECC. Others (13, 31, 43: the program's own bug;
#: 63, 92: recorded and corrected) only explain.
FATAL_XIDS = (48, 79, 95, 119, 120, 140)
#: CUDA errors that are sticky: every later CUDA call of the process fails too.
_STICKY_CUDA = (
    r"(?:an illegal memory access was encountered|unspecified launch failure"
    r"|uncorrectable ECC error encountered)"
)

#: Needles are the longest literal every match holds, not a word: they are searched
#: for in every byte of output (``line_scan.py``), and one that is common in healthy
#: output ("GPU", "CUDA") makes its every line be classified in Python.
_WATCHDOG_TIMEOUT = "Watchdog caught collective operation timeout: WorkNCCL("

#: torch's NCCL watchdog (ProcessGroupNCCL). With the default error handling it
#: tears the process down after these lines; a ``rank`` group puts that rank's
#: flight recorder dump path in the detail.
WATCHDOG_PATTERNS: tuple[LogPattern, ...] = (
    # [Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=5, ...
    LogPattern.of(
        r"\bRank (?P<rank>\d+)\] Watchdog caught collective operation timeout: WorkNCCL\(",
        _NCCL,
        needle=_WATCHDOG_TIMEOUT,
    ),
    LogPattern.of(
        r"Watchdog caught collective operation timeout: WorkNCCL\(", _NCCL, needle=_WATCHDOG_TIMEOUT
    ),
    # [PG ID 0 PG GUID 0(default_pg) Rank 1] Exception (either an error or timeout)
    # detected by watchdog at work: 808, ... / [Rank 1]  failure detected by watchdog ...
    LogPattern.of(
        r"\bRank (?P<rank>\d+)\]\s+(?:Exception \(either an error or timeout\)|failure) "
        r"detected by watchdog at work",
        _NCCL,
        needle=(
            "Exception (either an error or timeout) detected by watchdog at work",
            "failure detected by watchdog at work",
        ),
    ),
    LogPattern.of(
        r"ProcessGroupNCCL's watchdog got stuck for \d+ seconds without making progress",
        _NCCL,
        needle="ProcessGroupNCCL's watchdog got stuck for ",
    ),
    LogPattern.of(
        r"Heartbeat monitor timed out! Process will be terminated",
        _NCCL,
        needle="Heartbeat monitor timed out! Process will be terminated",
    ),
    LogPattern.of(
        r"Some NCCL operations have failed or timed out\. Due to the asynchronous nature",
        _NCCL,
        needle="Some NCCL operations have failed or timed out",
    ),
    LogPattern.of(
        r"To avoid (?:data|this) inconsistency, we are taking the entire process down",
        _NCCL,
        needle=" inconsistency, we are taking the entire process down",
    ),
    LogPattern.of(
        r"Received a dump signal due to a collective timeout from|Terminating the process "
        r"after attempting to dump debug info",
        _NCCL,
        needle=(
            "Received a dump signal due to a collective timeout from",
            "Terminating the process after attempting to dump debug info",
        ),
    ),
)

DEFAULT_PATTERNS: tuple[LogPattern, ...] = (
    *WATCHDOG_PATTERNS,
    # --- stop: the GPU or the CUDA context is gone ------------------------------------
    # RuntimeError / torch.AcceleratorError: CUDA error: an illegal memory access was
    # encountered; NCCL WARN Cuda failure 700 'an illegal memory access was encountered'
    LogPattern.of(
        rf"(?:CUDA error: |Triton Error \[CUDA\]: |Cuda failure (?:\d+ )?'){_STICKY_CUDA}",
        _CUDA,
        needle=("CUDA error: ", "Triton Error [CUDA]: ", "Cuda failure "),
    ),
    # NVRM: Xid (PCI:0000:2b:00): 79, GPU has fallen off the bus.
    LogPattern.of(
        rf"NVRM: Xid \({_PCI}\): (?:{'|'.join(map(str, FATAL_XIDS))}),", _CUDA, needle="NVRM: Xid ("
    ),
    # NVRM: GPU at 0000:01:00.0 has fallen off the bus. / NVRM: GPU 0000:2b:00.0: GPU has ...
    LogPattern.of(
        rf"NVRM: GPU (?:at )?{_PCI}:? (?:GPU )?has fallen off the bus", _CUDA, needle="NVRM: GPU "
    ),
    # nvidia-smi: Unable to determine the device handle for GPU 0000:02:00.0: GPU is lost.
    LogPattern.of(
        r"Unable to determine the device handle for GPU ?[0-9A-Fa-f:.]+: GPU is lost"
        r"|\bNVMLError_GpuIsLost\b",
        _CUDA,
        needle=("GPU is lost", "NVMLError_GpuIsLost"),
    ),
    # --- explain only: often fatal, yet a program may catch it or retry ----------------
    # torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; ...)
    LogPattern.of(
        r"CUDA out of memory\. |CUDA error: out of memory",
        _CUDA,
        _EXPLAIN,
        needle=("CUDA out of memory. ", "CUDA error: out of memory"),
    ),
    # torch.distributed.DistBackendError: NCCL error in: .../ProcessGroupNCCL.cpp:1970,
    # unhandled system error ...; older: NCCL error: unhandled system error, NCCL version
    LogPattern.of(r"\bNCCL error(?: in: \S+:\d+|: )", _NCCL, _EXPLAIN, needle="NCCL error"),
    LogPattern.of(
        r"\bnccl(?:Internal|System|UnhandledCuda|Remote)Error\b",
        _NCCL,
        _EXPLAIN,
        needle=tuple(
            f"nccl{kind}Error" for kind in ("Internal", "System", "UnhandledCuda", "Remote")
        ),
    ),
    LogPattern.of(
        r"NCCL communicator was aborted on rank \d+",
        _NCCL,
        _EXPLAIN,
        needle="NCCL communicator was aborted on rank ",
    ),
    # NCCL WARN NET/IB : Got completion from peer 10.0.0.2<54862> with status=12 opcode=0 ...
    LogPattern.of(
        r"NET/IB\w* ?: ?Got completion from peer \S+ with (?:status=|error )\d+",
        _NCCL,
        _EXPLAIN,
        needle="Got completion from peer ",
    ),
    # NCCL WARN Cuda failure 'out of memory' (the sticky ones stop, above)
    LogPattern.of(r"Cuda failure (?:\d+ )?'[^']+'", _CUDA, _EXPLAIN, needle="Cuda failure "),
    LogPattern.of(rf"NVRM: Xid \({_PCI}\): \d+,", _CUDA, _EXPLAIN, needle="NVRM: Xid ("),
    LogPattern.of(
        r"uncorrectable ECC error encountered",
        _CUDA,
        _EXPLAIN,
        needle="uncorrectable ECC error encountered",
    ),
    LogPattern.of(
        r"Unable to determine the device handle for GPU ?[0-9A-Fa-f:.]+: Unknown Error",
        _CUDA,
        _EXPLAIN,
        needle="Unable to determine the device handle for GPU",
    ),
)
