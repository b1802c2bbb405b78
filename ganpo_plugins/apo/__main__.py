"""``python -m ganpo_plugins.apo``: the APO round driver (see :mod:`ganpo_plugins.apo.cli`)."""

from .cli import main

raise SystemExit(main())
