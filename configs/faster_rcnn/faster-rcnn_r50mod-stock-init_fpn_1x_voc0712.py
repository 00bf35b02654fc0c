# Faster R-CNN ResNet50-MoD + FPN on Pascal VOC without an ImageNet MoD run:
# the recipe of faster-rcnn_r50mod_fpn_1x_voc0712.py, with the backbone
# warm-started from mmdet's own ImageNet starting point, torchvision's
# ResNet50 (`torchvision://resnet50`, what the stock config starts from): the
# stem and the standard blocks take its weights, the MoD blocks start fresh
# (mmmod.models.warm_start).
#
#   tools/dist_train.sh \
#       configs/faster_rcnn/faster-rcnn_r50mod-stock-init_fpn_1x_voc0712.py 8
_base_ = ['./faster-rcnn_r50mod_fpn_1x_voc0712.py']

model = dict(backbone=dict(init_cfg=dict(
    type='WarmStartFromResNet', checkpoint='torchvision://resnet50')))
