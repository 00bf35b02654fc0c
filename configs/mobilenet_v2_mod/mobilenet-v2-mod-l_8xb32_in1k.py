# MobileNetV2-MoD-L (supplement Table 6): stages 2-5 widened to 32, 64, 96,
# 128 channels, c = 32. Same recipe as mobilenet-v2-mod_8xb32_in1k.py (the
# stock MobileNetV2 one); the head still sees the 1280-channel last conv.
_base_ = ['./mobilenet-v2-mod_8xb32_in1k.py']

model = dict(backbone=dict(arch='L'))
