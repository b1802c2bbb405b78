"""The Axolotl plugin: keeps Axolotl's own trainer and attaches the regularizer to it.

    plugins:
      - ganpo_axolotl.GANPOPlugin
    ganpo:
      weight: 1.0

GANPO is on when the config has a ``ganpo:`` block or lists the plugin (Axolotl ≥ 0.21 also loads
it by entry point; it stays inert without either). No Axolotl module is patched: the plugin uses
Axolotl's plugin hooks, hands the trainer to :func:`ganpo_plugins.attach` (the TRL adapter) and
chains Axolotl's SIGINT handler while training runs. docs/adapters.md says how, hook by hook.
"""

from __future__ import annotations

from typing import Any

from axolotl.integrations.base import BasePlugin

from ganpo_plugins import parse_config
from ganpo_plugins.config import BLOCK, refuse_misspelt_block

__all__ = ["GANPOPlugin", "ganpo_enabled"]


def ganpo_enabled(cfg: Any) -> bool:
    """GANPO is on when the config has a ``ganpo:`` block or lists this plugin."""
    plugins = [str(name).replace(":", ".") for name in cfg.get("plugins") or []]
    return cfg.get(BLOCK) is not None or any(name.startswith("ganpo_axolotl.") for name in plugins)


class GANPOPlugin(BasePlugin):
    """Adds a latent regularizer (GANPO by default) to ``rl: dpo``, ``ipo`` and ``simpo``, attached
    to the trainer Axolotl built (a plugin trainer class cannot be used for DPO: Axolotl builds it
    without its model arguments, axolotl#2883). Registered twice (entry point and ``plugins:``
    line), the first instance works."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = False
        self.models: list[Any] = []
        self.attachment: Any = None

    @property
    def duplicate(self) -> bool:
        """Whether another instance, registered first under another name, does the work."""
        from axolotl.integrations.base import PluginManager

        registered = [p for p in PluginManager.get_instance().plugins.values() if isinstance(p, GANPOPlugin)]
        return bool(registered) and self is not registered[0] and self in registered

    @property
    def active(self) -> bool:
        return self.enabled and not self.duplicate

    def register(self, cfg: Any) -> None:
        if self.duplicate:
            return
        refuse_misspelt_block(cfg.keys(), host="Axolotl")
        self.enabled = ganpo_enabled(cfg)

    def get_input_args(self) -> str | None:
        return None if self.duplicate else "ganpo_axolotl.args.GANPOArgs"

    def post_model_load(self, cfg: Any, model: Any) -> None:
        if self.active:
            self.models.append(model)  # the policy, then (when Axolotl loads one) the reference

    def add_callbacks_post_trainer(self, cfg: Any, trainer: Any) -> list[Any]:
        from ganpo_plugins.hf_trainer import SaveOnInterrupt

        return [SaveOnInterrupt(lambda: self.post_train(cfg, None))] if self.active else []

    def post_trainer_create(self, cfg: Any, trainer: Any) -> None:
        if self.active:
            from ganpo_plugins import attach

            simpo = getattr(cfg.rl, "value", cfg.rl) == "simpo" and len(self.models) > 1
            config = parse_config(cfg.get(BLOCK))  # the block Axolotl validated (GANPOArgs); None: defaults
            self.attachment = attach(trainer, config, ref_model=self.models[1] if simpo else None)

    def post_train(self, cfg: Any, model: Any) -> None:
        # Axolotl saves the final model with save_pretrained, not trainer.save_model: write the
        # regularizer state beside it here (checkpoints get theirs from the attachment).
        if self.attachment is not None and self.attachment.runner is not None:
            self.attachment.save(cfg.output_dir)
