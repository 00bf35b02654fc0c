# The demo's ResNet18-MoD: the baseline config with the CIFAR ResNet18
# backbone swapped for ResNetMoD_CIFAR (every odd block of a stage a MoD
# block, c = 64), same data and schedule.
_base_ = ['./resnet18_1xb16_digits.py']

custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)

model = dict(backbone=dict(type='ResNetMoD_CIFAR'))
