"""``python -m hivemem.cli``: the same as the ``hivemem`` console script."""

import sys

from hivemem.cli.main import main

sys.exit(main())
