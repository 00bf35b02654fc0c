from .timing import measure_latency, spread_warning, time_interleaved
from .counting import count_macs, count_params
from .table import format_table

__all__ = [
    'count_macs', 'count_params', 'format_table', 'measure_latency',
    'spread_warning', 'time_interleaved'
]
