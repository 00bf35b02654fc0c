# Table 9: ResNet86-MoD-lk, processed channels added to the last k channels.
_base_ = ['../resnet_mod/resnet86-mod_8xb32_in1k.py']

model = dict(backbone=dict(fusion='last-k'))
