"""Plain-text tables for what the command lines print: the end-of-run summary and ``--evaluate``
of ``nth_farthest.py``, and the memory-evolution demo's report."""
from __future__ import annotations

from typing import Sequence


def format_table(header: Sequence, rows: Sequence[Sequence], *, left: int = 1) -> str:
    """An aligned text table: the first ``left`` columns left-aligned, the others right-aligned,
    a rule of dashes under the header, columns two spaces apart (cells are turned into str)."""
    rows = [[str(c) for c in row] for row in rows]
    header = [str(c) for c in header]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"rows: every row needs {len(header)} cells like the header, "
                             f"got {len(row)}: {row}")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
