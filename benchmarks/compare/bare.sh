#!/usr/bin/env bash
# The bare command: both ranks started by hand, nothing watching them.
#   MASTER_PORT=29500 bash bare.sh PYTHON worker.py ARGS...
# Exits with rank 0's code, else rank 1's: what a shell script around a job does.
set -u
export MASTER_ADDR=127.0.0.1 MASTER_PORT="${MASTER_PORT:-29500}" WORLD_SIZE=2
RANK=0 LOCAL_RANK=0 "$@" &
rank0=$!
RANK=1 LOCAL_RANK=1 "$@" &
rank1=$!
wait "$rank0"
code0=$?
wait "$rank1"
code1=$?
exit $((code0 ? code0 : code1))
