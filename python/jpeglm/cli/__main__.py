"""``python -m jpeglm.cli``: the ``jpeglm`` command."""

import sys

from jpeglm.cli import main

sys.exit(main())
