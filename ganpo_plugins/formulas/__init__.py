"""Layer 1, pure math: torch functions and modules with no state beyond their parameters, no
config and no host types. Preference losses (the GPO family, SimPO, RaGAN, APO), discriminator
architectures, per-sequence log-probabilities from hidden states. Formula and paper in each
docstring. Imports nothing of ganpo_plugins."""
