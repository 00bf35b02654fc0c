_base_ = './resnet50_8xb16_cifar100.py'

model = dict(backbone=dict(type='ResNetMoD_CIFAR'))
