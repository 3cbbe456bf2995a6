"""Markdown for the reports steps write (the KFP UI renders it)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["table", "text"]


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    """A Markdown table's lines. A cell stays one cell of text: ``|`` is escaped, a line
    break becomes a space, and ``<`` and ``>`` are entities (cells may hold production
    inputs, which must not become headings or HTML in the KFP UI)."""
    header = list(header)
    lines = [_row(header), _row(["---"] * len(header))]
    return lines + [_row(row) for row in rows]


def text(value: str) -> str:
    """Text that may hold production values, as one line of inert Markdown: ``<`` and
    ``>`` as entities, line breaks as spaces."""
    return " ".join(value.replace("<", "&lt;").replace(">", "&gt;").splitlines())


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(_cell(str(cell)) for cell in cells) + " |"


def _cell(value: str) -> str:
    return text(value.replace("|", "\\|"))
