"""``python3 -m vaf.guest``: the worker's boot steps (see vaf.guest.worker)."""

import sys

from vaf.guest.worker import main

sys.exit(main())
