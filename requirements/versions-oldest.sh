# The oldest stack mmmod supports: what an mmdet 3.3 project pins (torch 2.1
# with mmcv 2.1.0). CI installs it beside versions.sh's stack
# (MMMOD_VERSIONS=requirements/versions-oldest.sh bash tools/install.sh).
TORCH_VERSION=2.1.2
TORCHVISION_VERSION=0.16.2
MMENGINE_VERSION=0.10.7
MMCV_VERSION=2.1.0
MMPRETRAIN_VERSION=1.2.0
MMSEG_VERSION=1.2.2
MMDET_VERSION=3.3.0
# torch 2.1's wheels are built against numpy 1
NUMPY_SPEC='numpy<2'
