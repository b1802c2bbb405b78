"""``python -m ganpo_plugins.plot``: the documented command; the tool is :mod:`ganpo_plugins.tools.plot`."""

from .tools.plot import main

if __name__ == "__main__":
    main()
