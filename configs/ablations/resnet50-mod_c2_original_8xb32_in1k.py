# Table 8: ResNet50-MoD with c = 2, the processed channels
# added back onto the channels they came from ("OP").
_base_ = ['../resnet_mod/resnet50-mod_8xb32_in1k.py']

model = dict(backbone=dict(c=2, fusion='original'))
