"""The ``foundry`` command line (``entry.main`` is the command; ``main.main`` its work)."""
