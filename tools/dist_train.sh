#!/usr/bin/env bash
# Distributed training on one node (or NNODES nodes):
#   tools/dist_train.sh CONFIG GPUS [train.py options]
# Without CUDA it runs GPUS CPU processes with the gloo backend.
exec "$(dirname "$0")/dist_run.sh" "$(dirname "$0")/train.py" "$2" "$1" \
    "${@:3}"
