"""The user's tools, on top of every layer: ``python -m ganpo_plugins doctor`` (:mod:`.doctor`),
``python -m ganpo_plugins.score`` (:mod:`.score`), ``python -m ganpo_plugins.plot`` (:mod:`.plot`)."""
