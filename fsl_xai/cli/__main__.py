"""``python -m fsl_xai.cli``: the ``fsl-xai`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
