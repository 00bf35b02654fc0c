# ResNet86-MoD on ImageNet-1k: ResNet50-MoD's recipe and 2048-wide head
# (Bottleneck), stage depths from supplement Table 5.
_base_ = ['./resnet50-mod_8xb32_in1k.py']

model = dict(backbone=dict(depth=86))
