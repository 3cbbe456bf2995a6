"""Plain, typed logic behind the Conveyor components.

Nothing in this package imports ``kfp``: unit tests call it directly, and the
component wrappers in ``components/`` are a few lines around it.
"""
