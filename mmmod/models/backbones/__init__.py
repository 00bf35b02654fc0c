from .mobilenet_v2_mod import MobileNetV2MoD
from .resnet_mod import ResNetMoD, ResNetMoD_CIFAR, ResNetV1cMoD, ResNetV1dMoD
from .vgg_mod import VGGMoD

__all__ = [
    'ResNetMoD', 'ResNetV1cMoD', 'ResNetV1dMoD', 'ResNetMoD_CIFAR',
    'MobileNetV2MoD', 'VGGMoD'
]
