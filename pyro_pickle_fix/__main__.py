"""``python -m pyro_pickle_fix``: see :mod:`pyro_pickle_fix.cli`."""

import sys

from .cli import main

sys.exit(main())
