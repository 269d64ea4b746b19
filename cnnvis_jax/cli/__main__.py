"""``python -m cnnvis_jax.cli``: the ``cnnvis`` command."""

import sys

from cnnvis_jax.cli import main

sys.exit(main())
