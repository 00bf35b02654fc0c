#!/usr/bin/env bash
# What tools/dist_train.sh and tools/dist_test.sh share:
#   tools/dist_run.sh SCRIPT NPROC [SCRIPT's arguments]
# First SCRIPT --preflight checks once that the run can start (checkpoints,
# data roots): if not, its one message, and no processes. Then torchrun
# starts NPROC processes (NNODES nodes); without CUDA they are CPU
# processes with the gloo backend.
SCRIPT=$1
NPROC=$2
PYTHON=${PYTHON:-python}
export PYTHONPATH="$(dirname "$0")/..":${PYTHONPATH:-}

# the world size, for the commands its messages suggest
WORLD_SIZE=$((NPROC * ${NNODES:-1})) "$PYTHON" "$SCRIPT" "${@:3}" --preflight \
    || exit $?
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --nproc_per_node="$NPROC" \
    --master_port="${PORT:-29500}" \
    "$SCRIPT" "${@:3}" --launcher pytorch
