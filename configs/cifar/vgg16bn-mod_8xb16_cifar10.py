_base_ = './vgg16bn_8xb16_cifar10.py'

model = dict(backbone=dict(type='VGGMoD'))
