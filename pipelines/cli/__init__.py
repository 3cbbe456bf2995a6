"""The ``conveyor`` command line: one module per group of commands."""

from conveyor.pipelines.cli.commands import main

__all__ = ["main"]
