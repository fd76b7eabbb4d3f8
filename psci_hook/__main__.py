"""``python3 -m psci_hook`` is the same as the ``psci-hook`` command."""

import sys

from psci_hook.cli import main

sys.exit(main())
