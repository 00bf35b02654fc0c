_base_ = './vgg19bn_8xb16_cifar100.py'

model = dict(backbone=dict(type='VGGMoD'))
