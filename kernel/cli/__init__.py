"""The ``foundry`` command line."""

from foundry.kernel.cli.main import main

__all__ = ["main"]
