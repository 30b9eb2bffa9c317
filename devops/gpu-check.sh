#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one run of at most 8 minutes:
#   1. the GPU monitor against the real NVML (healthy GPUs pass, an idle GPU is seen);
#   2. a real CUDA out-of-memory, through the log-pattern table: cuda_error, exit 75;
#   3. a real illegal memory access (a Triton kernel storing far out of bounds): the same;
#   4. py-spy on a CUDA process hung after CUDA init: the record names its line;
#   5. the NCCL preflight with one rank per GPU.
# Usage: bash devops/gpu-check.sh [OUT_DIR]    (PYTHON=... to pick the interpreter;
# default .venv/bin/python with the extras dev,torch,gpu,forensics installed: the GPU
# machine has no network, so bring the environment with you).
# Prints one PASS/FAIL line per check, logs under OUT_DIR; exits 1 if any check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-$(mktemp -d -t skyguard-gpu-check.XXXXXX)}
mkdir -p "$OUT"
export PY OUT PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
failed=0

# check NAME SECONDS CMD...: run CMD bounded; its output goes to OUT/NAME.log.
check() {
  local name=$1 limit=$2
  shift 2
  local began=$SECONDS
  # Through bash -c so that the shell functions below (exported) can be bounded too.
  if timeout --kill-after=5 "$limit" bash -c '"$@"' "$name" "$@" >"$OUT/$name.log" 2>&1; then
    echo "PASS $name ($((SECONDS - began))s)"
  else
    echo "FAIL $name (exit $?, $((SECONDS - began))s): $OUT/$name.log"
    tail -5 "$OUT/$name.log" | sed 's/^/    /'
    failed=1
  fi
}

# expect STATE_DIR REASON EXIT [PYTHON-ASSERTION]: the runner's record says so.
expect() {
  "$PY" - "$@" <<'PY'
import json, sys
state, reason, code = sys.argv[1], sys.argv[2], int(sys.argv[3])
record = json.load(open(f"{state}/termination.json"))
print(json.dumps(record, indent=1))
assert (record["reason"], record["exit_code"]) == (reason, code), record
if len(sys.argv) > 4:
    assert eval(sys.argv[4], {"record": record}), sys.argv[4]
PY
}

# run_expect NAME REASON EXIT ASSERTION -- SKYGUARD-RUN-ARGS...: skyguard run, then expect.
run_expect() {
  local name=$1 reason=$2 code=$3 assertion=$4
  shift 5
  "$PY" -m devops.skypilot run --state-dir "$OUT/$name.state" "$@"
  echo "skyguard run exited $?"
  expect "$OUT/$name.state" "$reason" "$code" "$assertion"
}

export -f expect run_expect

if ! nvidia-smi -L >"$OUT/nvidia-smi.log" 2>&1; then
  echo "FAIL nvidia-smi: no NVIDIA driver or GPU here ($OUT/nvidia-smi.log)"
  exit 1
fi
GPUS=$(grep -c '^GPU ' "$OUT/nvidia-smi.log")
echo "$GPUS GPU(s): $(head -1 "$OUT/nvidia-smi.log"); logs in $OUT"
"$PY" -c 'import torch, pynvml; assert torch.cuda.is_available(), "torch sees no CUDA"' ||
  { echo "FAIL environment: $PY needs torch with CUDA and nvidia-ml-py"; exit 1; }

cat >"$OUT/nvml.py" <<'PY'
import time
from devops.skypilot.node.monitors.gpu import GpuMonitor

monitor = GpuMonitor.create(idle_timeout=2)
assert monitor is not None, "GPU monitor not created (see the log line above)"
monitor.start(time.monotonic())
verdict = monitor.check(time.monotonic())
assert verdict is None, f"a healthy GPU gave a verdict: {verdict}"
deadline = time.monotonic() + 20  # nothing runs here: every GPU idles
while verdict is None and time.monotonic() < deadline:
    time.sleep(0.5)
    verdict = monitor.check(time.monotonic())
monitor.stop()
assert verdict is not None and "idle" in verdict.detail, f"idle GPUs not seen: {verdict}"
print("verdict:", verdict.reason.value, verdict.detail)
PY
check nvml 60 "$PY" "$OUT/nvml.py"

check cuda-oom 90 run_expect cuda-oom cuda_error 75 \
  "'CUDA out of memory' in record['detail']" -- \
  -- "$PY" -c "import torch; torch.empty(1 << 50, dtype=torch.uint8, device='cuda')"

cat >"$OUT/illegal.py" <<'PY'
import torch
import triton
import triton.language as tl


@triton.jit
def store_far_away(pointer):
    tl.store(pointer + (1 << 40), 1.0)  # 4 TiB past a one-float buffer


buffer = torch.zeros(1, device="cuda")
store_far_away[(1,)](buffer)
torch.cuda.synchronize()
PY
check illegal-address 120 run_expect illegal-address cuda_error 75 \
  "'illegal memory access' in record['detail']" -- \
  -- "$PY" "$OUT/illegal.py"

cat >"$OUT/cuda_hang.py" <<'PY'
import time
import torch
from devops.skypilot import heartbeat


def _hang_after_init():
    time.sleep(3600)


x = torch.ones(1 << 20, device="cuda") * 2
torch.cuda.synchronize()
heartbeat.beat(force=True)
_hang_after_init()
PY
check py-spy-cuda 90 run_expect py-spy-cuda heartbeat_timeout 75 \
  "'py-spy' in record['forensics']['sources'] and 'in time.sleep at cuda_hang.py' in record['forensics']['summary']" -- \
  --heartbeat-timeout 5 --startup-grace 60 --forensics-timeout 10 -- "$PY" "$OUT/cuda_hang.py"

check nccl-preflight 120 "$PY" -m devops.skypilot nccl-check --nproc "$GPUS" --backend nccl \
  --json "$OUT/nccl.json"

if [ "$failed" = 0 ]; then echo "gpu-check: all passed"; else echo "gpu-check: FAILED"; fi
exit "$failed"
