_base_ = './vgg16bn_cifar.py'

model = dict(backbone=dict(depth=19))
