# Table 8: ResNet50-MoD with c = 32, the processed channels
# added to the first k channels ("S").
_base_ = ['../resnet_mod/resnet50-mod_8xb32_in1k.py']

model = dict(backbone=dict(c=32, fusion='first-k'))
