from .mod_block import (FUSIONS, ChannelSelector, MoDBlock,
                        check_input_channels, is_mod_position, mod_channels)

__all__ = [
    'FUSIONS', 'ChannelSelector', 'MoDBlock', 'check_input_channels',
    'is_mod_position', 'mod_channels'
]
