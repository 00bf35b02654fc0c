# ResNet18-MoD on ImageNet-1k (supplement Tables 5, 7).
# The recipe is mmpretrain's stock ResNet one, which is the paper's: 100
# epochs, SGD lr 0.1 / momentum 0.9 / wd 1e-4, lr x0.1 at epochs 30, 60, 90,
# RandomResizedCrop 224 + flip, batch 256 in total (8 GPUs x 32 here; the
# paper used 4 x 64: keep 256 in total, e.g. `--cfg-options
# train_dataloader.batch_size=64` on 4 GPUs). Only the backbone type differs
# from the baseline configs/resnet_mod/baselines/resnet18_8xb32_in1k.py.
#
#   tools/dist_train.sh configs/resnet_mod/resnet18-mod_8xb32_in1k.py 8
#   tools/dist_test.sh configs/resnet_mod/resnet18-mod_8xb32_in1k.py CKPT 8
_base_ = ['mmpretrain::resnet/resnet18_8xb32_in1k.py']

custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)

model = dict(backbone=dict(type='ResNetMoD'))
