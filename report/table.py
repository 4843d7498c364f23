"""Plain-text tables for the report on stdout: columns padded to their widest cell, a dashed rule under the header."""
from __future__ import annotations


def aligned(cells: list[list[str]], left: int) -> str:
    """`cells` (the header first) as lines: the first `left` columns flush left (names), the rest flush right
    (figures), two spaces apart."""
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.rjust(w) if i >= left else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
