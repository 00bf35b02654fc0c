from .mod_block import (FUSIONS, ChannelSelector, MoDBlock,
                        check_input_channels, gather_channels,
                        is_mod_position, mod_channels, set_inplace)

__all__ = [
    'FUSIONS', 'ChannelSelector', 'MoDBlock', 'check_input_channels',
    'gather_channels', 'is_mod_position', 'mod_channels', 'set_inplace'
]
