"""The Axolotl plugin: keeps Axolotl's own trainer and attaches the regularizer to it.

    plugins:
      - ganpo_axolotl.GANPOPlugin
    ganpo:
      weight: 1.0

Axolotl loads plugins by ``module.Class`` (``load_plugin`` splits on the last dot), so the
short form ``plugins: [ganpo]`` cannot work; ``ganpo_axolotl.GANPOPlugin`` is the shortest.
"""

from __future__ import annotations

from typing import Any

from axolotl.integrations.base import BasePlugin

from ganpo_plugins import GANPOConfig, parse_config

__all__ = ["GANPOPlugin"]


class GANPOPlugin(BasePlugin):
    """Adds a latent regularizer (GANPO by default) to ``rl: dpo``, ``ipo`` and ``simpo``.

    ``post_trainer_create`` attaches it to the trainer Axolotl built (a plugin trainer class
    cannot be used for DPO: Axolotl builds it without its model arguments, axolotl#2883).
    For ``rl: simpo`` the second model Axolotl loads (the model hooks run twice) serves as
    the frozen reference; with an adapter and no second model, the reference is the policy
    with its adapters disabled.
    """

    def __init__(self) -> None:
        super().__init__()
        self.models: list[Any] = []
        self.attachment: Any = None

    def get_input_args(self) -> str:
        return "ganpo_axolotl.args.GANPOArgs"

    def post_model_load(self, cfg: Any, model: Any) -> None:
        self.models.append(model)  # the policy, then (when Axolotl loads one) the reference

    def post_trainer_create(self, cfg: Any, trainer: Any) -> None:
        from ganpo_trl import attach_regularizer

        ref_model = self.models[1] if getattr(cfg.rl, "value", cfg.rl) == "simpo" and len(self.models) > 1 else None
        self.attachment = attach_regularizer(trainer, config_from_cfg(cfg), ref_model=ref_model)

    def post_train(self, cfg: Any, model: Any) -> None:
        # Axolotl saves the final model with save_pretrained, not trainer.save_model: write the
        # regularizer state beside it here (checkpoints get theirs from the attachment).
        if self.attachment is not None and self.attachment.runner is not None:
            self.attachment.save(cfg.output_dir)


def config_from_cfg(cfg: Any) -> GANPOConfig:
    """The validated ``ganpo:`` block of a loaded Axolotl config (defaults when absent)."""
    block = cfg.get("ganpo")
    return parse_config(None if block is None else _plain(block))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
