"""Conveyor pipelines: definitions, compile targets, the local runner and the ``conveyor`` CLI."""
