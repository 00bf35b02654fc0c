# ResNet26-MoD on ImageNet-1k: ResNet18-MoD's recipe and 512-wide head
# (BasicBlock), stage depths from supplement Table 5.
_base_ = ['./resnet18-mod_8xb32_in1k.py']

model = dict(backbone=dict(depth=26))
