"""The MoD block and its ops: torch only (no OpenMMLab imports)."""
from .mod_block import (FUSIONS, ChannelSelector, ConvChain,
                        FewChannelConv2d, MoDBlock,
                        RefusesTrainingWhenDeployed, check_input_channels,
                        few_channel_convs, fold_conv_bn, is_mod_position,
                        mod_blocks, mod_channels, selector_width,
                        switch_to_deploy)
from . import onnx_symbolic  # noqa: F401  (torch.onnx.export, dynamo=False)
from .ops import HAS_EXT, fuse_channels, select_channels

__all__ = [
    'FUSIONS', 'HAS_EXT', 'ChannelSelector', 'ConvChain', 'FewChannelConv2d',
    'MoDBlock', 'RefusesTrainingWhenDeployed', 'check_input_channels',
    'few_channel_convs', 'fold_conv_bn', 'fuse_channels',
    'is_mod_position', 'mod_blocks', 'mod_channels', 'select_channels',
    'selector_width', 'switch_to_deploy'
]
