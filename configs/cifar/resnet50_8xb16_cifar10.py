_base_ = [
    'mmpretrain::_base_/models/resnet50_cifar.py',
    './_base_/datasets/cifar10_split_bs16.py',
    'mmpretrain::_base_/schedules/cifar10_bs128.py',
    './_base_/default_runtime.py',
]
