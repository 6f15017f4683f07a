import sys

from jellybean.cli import main

sys.exit(main())
