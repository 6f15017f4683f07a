"""``python -m jellybean.cli``: the ``jellybean`` command."""

import sys

from jellybean.cli.commands import main

sys.exit(main())
