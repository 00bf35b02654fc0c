#!/usr/bin/env bash
# The paper's CIFAR protocol (supplement S4) for one config: for each seed,
# train (best-on-val checkpoint kept) and test that checkpoint on the test set.
#
#   tools/cifar_seeds.sh CONFIG WORK_ROOT [K=V ...]
#
# Run s goes to WORK_ROOT/seed<s> (training, randomness.seed=s) and
# WORK_ROOT/seed<s>/test (testing); K=V are --cfg-options for both.
# A rerun resumes unfinished training and skips tested seeds.
# Environment: SEEDS (default "0 1 2 3 4"), GPUS (default 1: more trains with
# tools/dist_train.sh), PYTHON (default python).
# Then: python tools/analysis/gather_seeds.py WORK_ROOT [WORK_ROOT ...]
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
CONFIG=$1
WORK_ROOT=$2
OPTIONS=("${@:3}")
SEEDS=${SEEDS:-"0 1 2 3 4"}
GPUS=${GPUS:-1}
PYTHON=${PYTHON:-python}
TOOLS="$(cd "$(dirname "$0")" && pwd)"
[ -f "$CONFIG" ] || { echo "cifar_seeds.sh: config not found: $CONFIG" >&2; exit 1; }

for SEED in $SEEDS; do
    RUN="$WORK_ROOT/seed$SEED"
    if compgen -G "$RUN/test/*/*.json" > /dev/null; then
        echo "cifar_seeds.sh: seed $SEED already tested in $RUN/test, skipped"
        continue
    fi
    TRAIN_ARGS=(--work-dir "$RUN" --resume
                --cfg-options randomness.seed="$SEED" "${OPTIONS[@]}")
    if [ "$GPUS" -gt 1 ]; then
        PYTHON="$PYTHON" "$TOOLS/dist_train.sh" "$CONFIG" "$GPUS" "${TRAIN_ARGS[@]}"
    else
        "$PYTHON" "$TOOLS/train.py" "$CONFIG" "${TRAIN_ARGS[@]}"
    fi
    # CheckpointHook keeps one best_<metric>_epoch_<n>.pth: the best on val.
    BEST=$(compgen -G "$RUN/best_accuracy_top1_*.pth" | head -n 1) || {
        echo "cifar_seeds.sh: no best checkpoint in $RUN" >&2; exit 1; }
    "$PYTHON" "$TOOLS/test.py" "$CONFIG" "$BEST" --work-dir "$RUN/test" \
        --cfg-options randomness.seed="$SEED" "${OPTIONS[@]}"
done
