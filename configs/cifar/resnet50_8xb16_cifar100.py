_base_ = [
    'mmpretrain::_base_/models/resnet50_cifar.py',
    './_base_/datasets/cifar100_split_bs16.py',
    './_base_/schedules/cifar100_bs128.py',
    './_base_/default_runtime.py',
]

model = dict(head=dict(num_classes=100))
