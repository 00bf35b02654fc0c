_base_ = './resnet34_8xb16_cifar10.py'

model = dict(backbone=dict(type='ResNetMoD_CIFAR'))
