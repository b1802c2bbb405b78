"""Layer 2, the regularizers: the ``LatentRegularizer`` protocol and the data it exchanges with
adapters, the ``LearnedRegularizer`` base (optimisers, schedule, accumulation, data-parallel
sync, state), GANPO and MMD, each with its config model beside it. Imports the config schema
and :mod:`ganpo_plugins.formulas`; never the registry (the plugins layer hands a regularizer the
components its config names, resolved)."""
