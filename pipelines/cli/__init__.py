"""The ``conveyor`` command line: one module per group of commands."""

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The ``conveyor`` command (``commands.main``), imported when called, so that
    ``python -m conveyor.pipelines.cli.commands`` runs a module not imported yet."""
    from conveyor.pipelines.cli.commands import main as run

    return run(argv)
