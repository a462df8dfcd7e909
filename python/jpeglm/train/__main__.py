"""``python -m jpeglm.train [CONFIG.toml] [key=value ...]``: run training (see :mod:`jpeglm.train.loop`)."""

import sys

from jpeglm.train.loop import main

sys.exit(main())
