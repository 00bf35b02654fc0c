# The stock CIFAR schedule with the CIFAR-100 changes of the stock
# mmpretrain::resnet/resnet50_8xb16_cifar100.py (its only CIFAR-100 recipe).
_base_ = 'mmpretrain::_base_/schedules/cifar10_bs128.py'

optim_wrapper = dict(optimizer=dict(weight_decay=0.0005))
param_scheduler = dict(milestones=[60, 120, 160], gamma=0.2)
