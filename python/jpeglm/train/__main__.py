"""``python -m jpeglm.train [CONFIG.toml] [key=value ...]``: run training (the command line of
:func:`jpeglm.train.loop.main`; torchrun's ``-m jpeglm.train`` too)."""

import os
import sys

from jpeglm.train.loop import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # Under torchrun, leave without interpreter finalisation: gloo's worker threads release a
    # finished collective's work a moment after it completes (a barrier's work holds the ones
    # before it), and a release of Python-owned tensors needs the GIL -- taken during
    # finalisation, that aborts the process ("terminate called without an active exception",
    # seen with a core dump). Every file of the run is written and closed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
