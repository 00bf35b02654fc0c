_base_ = './resnet18_8xb16_cifar10.py'

model = dict(backbone=dict(type='ResNetMoD_CIFAR'))
