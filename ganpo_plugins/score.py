"""``python -m ganpo_plugins.score``: the documented command; the tool is :mod:`ganpo_plugins.tools.score`."""

import sys

from .tools.score import main

if __name__ == "__main__":
    sys.exit(main())
