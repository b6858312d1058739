"""``python -m fewlabel.plugins`` is the ``fewlabel`` command."""

import sys

from fewlabel.plugins.recipes.cli import main

sys.exit(main())
