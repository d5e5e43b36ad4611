"""The ``hivemem`` command line: one module per command group, each with ``--help``."""

from hivemem.cli.main import main

__all__ = ["main"]
