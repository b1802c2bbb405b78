"""Axolotl adapter of ganpo-plugins: ``plugins: [ganpo_axolotl.GANPOPlugin]`` plus a ``ganpo:``
block in the YAML adds a latent regularizer to ``rl: dpo``, ``ipo`` or ``simpo``."""

from .plugin import GANPOPlugin

__all__ = ["GANPOPlugin"]
