from .inference import fold_for_inference
from .mod_block import (FUSIONS, ChannelSelector, MoDBlock,
                        check_input_channels, is_mod_position, mod_channels,
                        set_inplace)

__all__ = [
    'FUSIONS', 'ChannelSelector', 'MoDBlock', 'check_input_channels',
    'fold_for_inference', 'is_mod_position', 'mod_channels', 'set_inplace'
]
