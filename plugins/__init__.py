"""Built-in blocks. Each module is a pluggy plugin, registered before any third-party one."""
