"""``python -m jpeglm.train [CONFIG.toml] [key=value ...]``: run training (the command line of
:func:`jpeglm.train.loop.main`; torchrun's ``-m jpeglm.train`` runs this too)."""

import sys

from jpeglm.train.loop import main

sys.exit(main())
