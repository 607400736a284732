"""``python -m foundry``: the ``foundry`` command."""

import sys

from foundry.kernel.cli.entry import main

sys.exit(main())
