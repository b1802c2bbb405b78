"""The Axolotl plugin: attaches the regularizer to the trainer Axolotl builds (a TRL trainer: the TRL
adapter's :func:`~ganpo_trl.attach_regularizer`, called directly). No Axolotl module is patched: it
uses Axolotl's plugin hooks and, while training runs, chains Axolotl's SIGINT handler.
docs/adapters.md says how, hook by hook."""

from __future__ import annotations

from typing import Any

from axolotl.integrations.base import BasePlugin, PluginManager
from ganpo_trl import attach_regularizer

from ganpo_plugins.adapter_kit import BLOCK, RegularizerConfig, SaveOnInterrupt, refuse_misspelt_block

__all__ = ["GANPOPlugin", "active_plugin", "ganpo_enabled"]


def ganpo_enabled(cfg: Any) -> bool:
    """GANPO is on when the config has a ``ganpo:`` block or lists this plugin (Axolotl ≥ 0.21 also
    loads it by entry point in every run: it stays inert there without either)."""
    plugins = [str(name).replace(":", ".") for name in cfg.get("plugins") or []]
    return cfg.get(BLOCK) is not None or any(name.startswith("ganpo_axolotl.") for name in plugins)


class GANPOPlugin(BasePlugin):
    """Adds a latent regularizer (GANPO by default) to ``rl: dpo``, ``ipo``, ``simpo`` and ``grpo``
    (sides by advantage sign), attached to the trainer Axolotl built (a plugin trainer class cannot
    be used for DPO: Axolotl builds it without its model arguments, axolotl#2883)."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = False
        self.models: list[Any] = []  # the policy, then (when Axolotl loads one) the reference
        self.attachment: Any = None
        self.config: RegularizerConfig | None = None  # the block as Axolotl validated it (GANPOArgs)

    @property
    def duplicate(self) -> bool:
        """Registered twice (entry point and ``plugins:`` line), the first instance works."""
        registered = _registered()
        return self in registered and self is not registered[0]

    @property
    def active(self) -> bool:
        return self.enabled and not self.duplicate

    def validated(self, config: RegularizerConfig) -> None:
        """Keep the block Axolotl's config validation parsed (``GANPOArgs``): it is attached as it is."""
        self.config = config

    def register(self, cfg: Any) -> None:
        if not self.duplicate:
            refuse_misspelt_block(cfg.keys(), host="Axolotl")
            self.enabled = ganpo_enabled(cfg)

    def get_input_args(self) -> str | None:
        return None if self.duplicate else "ganpo_axolotl.args.GANPOArgs"

    def post_model_load(self, cfg: Any, model: Any) -> None:
        if self.active:
            self.models.append(model)

    def add_callbacks_post_trainer(self, cfg: Any, trainer: Any) -> list[Any]:
        return [SaveOnInterrupt(lambda: self.post_train(cfg, None))] if self.active else []

    def post_trainer_create(self, cfg: Any, trainer: Any) -> None:
        if self.active:
            simpo = getattr(cfg.rl, "value", cfg.rl) == "simpo" and len(self.models) > 1
            if self.config is None:
                raise RuntimeError(
                    "ganpo plugin: the ganpo: block was not validated by Axolotl's config model in this process "
                    "(ganpo_axolotl.args.GANPOArgs); load the config with axolotl's CLI or load_cfg"
                )
            self.attachment = attach_regularizer(trainer, self.config, ref_model=self.models[1] if simpo else None)

    def post_train(self, cfg: Any, model: Any) -> None:
        # Axolotl saves the final model with save_pretrained, not trainer.save_model: write the
        # regularizer state beside it here (checkpoints get theirs from the attachment).
        if self.attachment is not None and self.attachment.runner is not None:
            self.attachment.save(cfg.output_dir)


def active_plugin() -> GANPOPlugin | None:
    """The GANPO plugin instance Axolotl registered and that works (the first of duplicates)."""
    registered = _registered()
    return registered[0] if registered else None


def _registered() -> list[GANPOPlugin]:
    return [p for p in PluginManager.get_instance().plugins.values() if isinstance(p, GANPOPlugin)]
