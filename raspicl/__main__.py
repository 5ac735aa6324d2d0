"""python -m raspicl: the same as the raspicl command."""

import sys

from raspicl.cli import main

sys.exit(main())
