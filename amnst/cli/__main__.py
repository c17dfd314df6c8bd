"""``python -m amnst.cli``: the ``amnst`` command."""

import sys

from amnst.cli import main

sys.exit(main())
