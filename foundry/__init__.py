"""Foundry: the distribution's top-level package. Its parts are ``foundry.kernel`` (the daemon and
the plugin API), ``foundry.plugins``, ``foundry.analytics`` and ``foundry.proto``, each mapped from
its own folder (pyproject ``package-dir``); this folder holds only ``python -m foundry``."""
