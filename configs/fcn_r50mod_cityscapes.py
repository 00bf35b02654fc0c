# FCN with a ResNet50-MoD backbone on Cityscapes (SPEC section 5).
# The recipe is mmseg's stock FCN-R50-D8 512x1024 80k one, unchanged: SyncBN,
# dropout 0.1, auxiliary FCN head (loss weight 0.4), SGD lr 0.01 / momentum 0.9
# / wd 5e-4, poly lr (power 0.9, down to 1e-4), 80k iterations, mIoU and a
# checkpoint every 8k; `tools/test.py --tta` uses its multi-scale flip
# `tta_pipeline` (ratios 0.5-1.75) and `tta_model`.
#
#   tools/dist_train.sh configs/fcn_r50mod_cityscapes.py 4
#   tools/dist_test.sh configs/fcn_r50mod_cityscapes.py CKPT 4 --tta
_base_ = ['mmseg::fcn/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py']

custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)

# The backbone starts from our own ImageNet ResNet50-MoD, as the stock one
# starts from `open-mmlab://resnet50_v1c`. FCN's backbone has the V1c deep
# stem, so the classifier must have it too: train it first with
#   tools/dist_train.sh configs/resnet_mod/resnet50-v1c-mod_8xb32_in1k.py 8
# WarmStartFromResNet loads it whole, MoD blocks included, into mmseg's own
# V1c layout (stem.0.weight, ...; the classifier has mmpretrain's,
# stem.0.conv.weight, ...), and refuses a checkpoint whose stem or stages do
# not fit (mmengine's Pretrained would only warn and leave them random).
# Without that run, use the config that warm-starts the backbone from the
# stock ImageNet ResNet50-V1c, named here for tools/train.py's message when
# `pretrained` is missing.
pretrained = 'work_dirs/resnet50-v1c-mod_8xb32_in1k/epoch_100.pth'
stock_init_config = 'fcn_r50mod-stock-init_cityscapes'
model = dict(
    pretrained=None,  # the stock `open-mmlab://resnet50_v1c`
    backbone=dict(
        type='ResNetV1cMoD',
        init_cfg=dict(type='WarmStartFromResNet', checkpoint=pretrained)))
