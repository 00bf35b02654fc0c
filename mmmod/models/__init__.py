from .backbones import *  # noqa: F401,F403
from . import warm_start  # noqa: F401  registers WarmStartFromResNet
