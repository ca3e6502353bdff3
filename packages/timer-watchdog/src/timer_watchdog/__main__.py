"""Run the ``timer-watchdog`` command as ``python -m timer_watchdog``."""

import sys

from ._cli import main

sys.exit(main())
