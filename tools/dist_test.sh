#!/usr/bin/env bash
# Distributed testing on one node (or NNODES nodes):
#   tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py options]
# Without CUDA it runs GPUS CPU processes with the gloo backend.
exec "$(dirname "$0")/dist_run.sh" "$(dirname "$0")/test.py" "$3" "$1" "$2" \
    "${@:4}"
