"""``python -m foundry``: the ``foundry`` command."""

import sys

from foundry.kernel.cli.main import main

sys.exit(main())
