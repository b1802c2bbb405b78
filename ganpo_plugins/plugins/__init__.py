"""Layer 3, the plugin plumbing: the hookspecs third parties implement, the plugin managers (entry
points of ``ganpo_plugins`` and ``ganpo_plugins.hosts``), the built-ins registered through the
same hooks, the one place a config is parsed against the registry (:mod:`.parse`), building the
regularizer it names (:mod:`.build`) and ``ganpo_plugins.attach`` (:mod:`.dispatch`)."""
