# ImageNet ResNet50-MoD with the V1c deep stem (three 3x3 convs): the
# pre-training for configs/fcn_r50mod_cityscapes.py, whose dilated backbone
# has that stem (as mmseg's own FCN starts from `open-mmlab://resnet50_v1c`).
# Same recipe as the paper's ResNet50-MoD; only the stem differs.
_base_ = ['./resnet50-mod_8xb32_in1k.py']

model = dict(backbone=dict(type='ResNetV1cMoD'))
