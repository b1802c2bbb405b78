"""OpenRLHF 0.11.2 adapter: launchers that run OpenRLHF's own CLIs with a latent regularizer
(``ganpo_openrlhf.train_dpo``) or the APO reward-model loss (``ganpo_openrlhf.train_rm``).

Importing this package does not import OpenRLHF; the launchers do, after validating their flags.
"""
