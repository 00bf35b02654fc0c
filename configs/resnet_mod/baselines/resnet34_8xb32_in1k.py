# The ResNet34 baseline of ResNet34-MoD: mmpretrain's stock config, whose
# recipe (100 epochs, SGD lr 0.1, step x0.1 at 30/60/90, wd 1e-4, batch
# 256) is the MoD configs' one, so the comparison is like for like.
_base_ = ['mmpretrain::resnet/resnet34_8xb32_in1k.py']
