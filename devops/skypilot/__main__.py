"""``python -m devops.skypilot COMMAND ...``: the ``skyguard`` command, without it on PATH."""

import sys

from devops.skypilot.cli import main

sys.exit(main())
