from .selection import (Selection, SelectionRecorder, format_summary,
                        pick_blocks, plot_features, plot_frequency,
                        plot_scores, summarise)

__all__ = [
    'Selection', 'SelectionRecorder', 'summarise', 'format_summary',
    'plot_frequency', 'plot_scores', 'plot_features', 'pick_blocks'
]
