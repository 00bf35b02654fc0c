# FCN ResNet50-MoD on Cityscapes without an ImageNet MoD run: the recipe of
# fcn_r50mod_cityscapes.py, with the backbone warm-started from mmseg's own
# ImageNet starting point, the stock ResNet50-V1c (`open-mmlab://resnet50_v1c`,
# what the stock FCN config starts from): the stem and the standard blocks take
# its weights, the MoD blocks start fresh (mmmod.models.warm_start).
#
#   tools/dist_train.sh configs/fcn_r50mod-stock-init_cityscapes.py 4
_base_ = ['./fcn_r50mod_cityscapes.py']

model = dict(backbone=dict(init_cfg=dict(
    type='WarmStartFromResNet', checkpoint='open-mmlab://resnet50_v1c')))
