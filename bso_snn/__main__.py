"""``python -m bso_snn ...`` is the ``bso-snn`` command."""

import sys

from .cli import main

sys.exit(main())
