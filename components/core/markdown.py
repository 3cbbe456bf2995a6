"""Markdown for the reports steps write (the KFP UI renders it)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["table"]


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    """A Markdown table's lines; a ``|`` inside a cell is escaped."""
    header = list(header)
    lines = [_row(header), _row(["---"] * len(header))]
    return lines + [_row(row) for row in rows]


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"
