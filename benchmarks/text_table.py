"""Text tables shared by the benchmark scripts."""

from __future__ import annotations

from collections.abc import Sequence


def print_table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1
) -> None:
    """Print rows as a text table under ``title``: the first ``text_columns`` columns aligned
    left, the others (numbers) right."""
    widths = [max(len(str(r[k])) for r in [header, *rows]) for k in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}")
    print(line)
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    print(line)
    for row in rows:
        cells = [
            str(c).ljust(w) if k < text_columns else str(c).rjust(w)
            for k, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    print(line, flush=True)
