_base_ = './vgg16bn_8xb16_cifar100.py'

model = dict(backbone=dict(type='VGGMoD'))
