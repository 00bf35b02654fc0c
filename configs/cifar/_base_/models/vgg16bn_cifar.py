# VGG16-BN for 32x32 inputs, as counted in the paper (Table 11): the conv
# stages (1x1 after the last pool), global average pooling and a
# 512-512-512-classes classifier.
_base_ = 'mmpretrain::_base_/models/vgg16bn.py'

model = dict(
    backbone=dict(num_classes=-1),  # no ImageNet classifier: features only
    neck=dict(_delete_=True, type='GlobalAveragePooling'),  # base: None
    head=dict(
        _delete_=True,
        type='StackedLinearClsHead',
        num_classes=10,
        in_channels=512,
        mid_channels=[512, 512],
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0)))
