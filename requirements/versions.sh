# The pinned stack, read by tools/install.sh and docker/Dockerfile (one source of truth).
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMENGINE_VERSION=0.10.7
MMCV_VERSION=2.1.0
MMPRETRAIN_VERSION=1.2.0
MMSEG_VERSION=1.2.2
MMDET_VERSION=3.3.0
