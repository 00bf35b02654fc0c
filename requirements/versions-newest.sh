# The newest torch mmmod is tested on: torch 2.15 with the newest torchvision
# (0.29.2 declares torch>=2.14), mmcv 2.1.0 built for it. CI installs it
# beside versions.sh's stack
# (MMMOD_VERSIONS=requirements/versions-newest.sh bash tools/install.sh).
TORCH_VERSION=2.15.0
TORCHVISION_VERSION=0.29.2
MMENGINE_VERSION=0.10.7
MMCV_VERSION=2.1.0
MMPRETRAIN_VERSION=1.2.0
MMSEG_VERSION=1.2.2
MMDET_VERSION=3.3.0
