"""Tables as Markdown and CSV: the notebooks' summaries and the paper's tables side by side."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .files import atomic_path, write_csv

__all__ = ["format_value", "markdown_table", "write_table"]


def format_value(value: Any, digits: int = 3) -> str:
    """Numbers to ``digits`` significant decimals; None and nan become '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2e}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (dicts) in ``columns`` order."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(c), digits) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_table(
    path: str | os.PathLike, rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str = "",
    digits: int = 3,
) -> tuple[Path, Path]:
    """Write ``path``.md (with an optional title line) and ``path``.csv, each atomically."""
    path = Path(path)
    md_path, csv_path = path.with_suffix(".md"), path.with_suffix(".csv")
    text = (f"{title}\n\n" if title else "") + markdown_table(rows, columns, digits)
    with atomic_path(md_path) as tmp:
        tmp.write_text(text)
    write_csv(csv_path, rows, list(columns))
    return md_path, csv_path
