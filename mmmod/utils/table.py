"""The one table writer of every tool: aligned text for the terminal,
Markdown for files."""
from typing import Sequence


def format_table(header: Sequence[str],
                 rows: Sequence[Sequence[str]],
                 markdown: bool = False,
                 left: int = 1) -> str:
    """``header`` and ``rows`` (strings) as a table: the first ``left``
    columns (names) left-aligned, the others (numbers) right-aligned."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    if any(len(r) != len(header) for r in cells):
        raise ValueError('every row must have as many cells as the header')
    if markdown:
        lines = ['| ' + ' | '.join(r) + ' |' for r in cells]
        lines.insert(1, '|' + '|'.join(['---'] * left + ['---:'] *
                                       (len(header) - left)) + '|')
        return '\n'.join(lines) + '\n'
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return '\n'.join('  '.join(
        c.ljust(w) if i < left else c.rjust(w)
        for i, (c, w) in enumerate(zip(r, widths))) for r in cells) + '\n'
