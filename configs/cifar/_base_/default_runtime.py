_base_ = 'mmpretrain::_base_/default_runtime.py'

default_hooks = dict(
    # Keep the best checkpoint on the held-out val set (tested afterwards)
    # and the latest one (to resume), not one per epoch.
    checkpoint=dict(
        save_best='accuracy/top1', rule='greater', max_keep_ckpts=1))
# Five runs per model, seeds 0..4 (tools/cifar_seeds.sh sets it per run).
randomness = dict(seed=0)
