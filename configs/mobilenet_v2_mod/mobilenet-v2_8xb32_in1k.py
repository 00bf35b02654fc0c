# The MobileNetV2 baseline of MobileNetV2-MoD: mmpretrain's stock config,
# whose recipe the MoD configs beside it share (see their header).
_base_ = ['mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py']
