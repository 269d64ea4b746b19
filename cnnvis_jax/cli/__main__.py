"""``python -m cnnvis_jax.cli``: the ``cnnvis`` command."""

import sys

from cnnvis_jax.cli import main

if __name__ == "__main__":  # not in the decoding processes that import this module
    sys.exit(main())
