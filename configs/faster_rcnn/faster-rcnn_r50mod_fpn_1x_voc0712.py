# Faster R-CNN with a ResNet50-MoD + FPN on Pascal VOC (SPEC section 5).
# The recipe is mmdet's stock R50-FPN 1x VOC0712 one, unchanged: VOC2007+2012
# trainval (repeated 3 times, 4 epochs), images resized to (1000, 600) keeping
# the ratio, horizontal flip 0.5, batch 2 per GPU, and the VOC mAP with
# 11-point interpolation on the VOC2007 test split.
#
#   tools/dist_train.sh \
#       configs/faster_rcnn/faster-rcnn_r50mod_fpn_1x_voc0712.py 8
_base_ = ['mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py']

custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)

# The backbone starts from our own ImageNet ResNet50-MoD (7x7 stem, as the
# stock `torchvision://resnet50`), trained first with
#   tools/dist_train.sh configs/resnet_mod/resnet50-mod_8xb32_in1k.py 8
# Without that run, use the config that warm-starts the backbone from the
# stock ImageNet ResNet50, named here for tools/train.py's message when
# `pretrained` is missing.
pretrained = 'work_dirs/resnet50-mod_8xb32_in1k/epoch_100.pth'
stock_init_config = 'faster-rcnn_r50mod-stock-init_fpn_1x_voc0712'
model = dict(
    backbone=dict(
        type='ResNetMoD',
        # loads a ResNet-MoD checkpoint whole; refuses one whose stem or
        # stages do not fit (mmengine's Pretrained would only warn)
        init_cfg=dict(type='WarmStartFromResNet', checkpoint=pretrained)))
