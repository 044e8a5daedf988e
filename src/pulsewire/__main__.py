"""``python -m pulsewire``: the ``pulsewire`` command."""

import sys

from .cli import main

sys.exit(main())
