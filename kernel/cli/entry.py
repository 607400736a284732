"""The ``foundry`` command's entry point: the command's modules are imported inside it, where a
Ctrl-C during their ~0.3 s of imports ends the command quietly (exit 130), as it does later."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from foundry.kernel.cli.main import main as run
    except KeyboardInterrupt:
        return 130
    return run()


if __name__ == "__main__":
    sys.exit(main())
