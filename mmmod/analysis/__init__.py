from .complexity import complexity
from .seeds import gather_seeds
from .samples import display_image, load_samples, record
from .selection import (Selection, SelectionRecorder, format_summary,
                        pick_blocks, plot_features, plot_frequency,
                        plot_scores, summarise)

__all__ = [
    'Selection', 'SelectionRecorder', 'summarise', 'format_summary',
    'plot_frequency', 'plot_scores', 'plot_features', 'pick_blocks',
    'complexity', 'gather_seeds', 'display_image', 'load_samples', 'record'
]
