"""The Axolotl plugin: keeps Axolotl's own trainer and attaches the regularizer to it.

    plugins:
      - ganpo_axolotl.GANPOPlugin
    ganpo:
      weight: 1.0

When GANPO is on: a ``ganpo:`` block is present, or the plugin is listed in ``plugins:`` (then
the block's defaults apply). Axolotl ≥ 0.21 also loads the plugin by its entry point (group
``axolotl.plugins``) in every run of an environment where this package is installed, so the
block alone switches GANPO on there; without either, the plugin stays inert: no validation, no
attach. Axolotl 0.19 reads ``plugins:`` only (``module.Class``: its loader splits on the last
dot, so a bare ``ganpo`` cannot work).

A misspelt block (``gnapo:``) is refused when the plugin registers, before validation and
before any model loads; Axolotl would otherwise drop the unknown key and train without it.

Host objects used (no Axolotl module is patched): the plugin hooks ``register``,
``get_input_args``, ``post_model_load``, ``add_callbacks_post_trainer``, ``post_trainer_create``
and ``post_train``; the trainer Axolotl builds is handed to :func:`ganpo_plugins.attach` (the TRL
adapter, whose ``WRAPPED`` lists what it wraps on that trainer instance). One process-wide object
is wrapped: Axolotl's SIGINT handler (which saves the model with ``save_pretrained`` and exits) is
chained when training starts so the regularizer state is written beside that final model; the
previous handler is restored when training ends.
"""

from __future__ import annotations

import difflib
import signal
import threading
from typing import Any

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

from ganpo_plugins import RegularizerConfig, parse_config

__all__ = ["GANPOPlugin", "ganpo_enabled"]

BLOCK = "ganpo"
PLUGIN_MODULE = "ganpo_axolotl"


def ganpo_enabled(cfg: Any) -> bool:
    """GANPO is on when the config has a ``ganpo:`` block or lists this plugin."""
    if _get(cfg, BLOCK) is not None:
        return True
    return any(str(name).replace(":", ".").startswith(PLUGIN_MODULE + ".") for name in _get(cfg, "plugins") or [])


def misspelt_block(keys: Any) -> str | None:
    """A top-level key that looks like a misspelling of ``ganpo`` (``gnapo``, ``ganpo_``)."""
    for key in keys:
        if isinstance(key, str) and key != BLOCK and difflib.get_close_matches(key.lower(), [BLOCK], cutoff=0.7):
            return key
    return None


class GANPOPlugin(BasePlugin):
    """Adds a latent regularizer (GANPO by default) to ``rl: dpo``, ``ipo`` and ``simpo``.

    ``post_trainer_create`` attaches it to the trainer Axolotl built (a plugin trainer class
    cannot be used for DPO: Axolotl builds it without its model arguments, axolotl#2883).
    For ``rl: simpo`` the second model Axolotl loads (the model hooks run twice) serves as
    the frozen reference; with an adapter and no second model, the reference is the policy
    with its adapters disabled.

    Axolotl ≥ 0.21 may register the plugin twice (its entry point and a ``plugins:`` line name
    the same class differently): the first instance works, later ones stay inert.
    """

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

    def register(self, cfg: Any) -> None:
        if self.duplicate:
            return
        typo = misspelt_block(cfg.keys())
        if typo is not None:
            raise ValueError(
                f"unknown top-level key {typo!r}: did you mean {BLOCK!r}? Axolotl would drop it and train without "
                f"the regularizer; rename it to {BLOCK}:"
            )
        self.enabled = ganpo_enabled(cfg)

    def get_input_args(self) -> str | None:
        return None if self.duplicate else "ganpo_axolotl.args.GANPOArgs"

    def post_model_load(self, cfg: Any, model: Any) -> None:
        if self.enabled and not self.duplicate:
            self.models.append(model)  # the policy, then (when Axolotl loads one) the reference

    def add_callbacks_post_trainer(self, cfg: Any, trainer: Any) -> list[Any]:
        if not self.enabled or self.duplicate:
            return []
        return [_SaveOnInterrupt(self, cfg.output_dir)]

    def post_trainer_create(self, cfg: Any, trainer: Any) -> None:
        if not self.enabled or self.duplicate:
            return
        from ganpo_plugins import attach

        ref_model = self.models[1] if getattr(cfg.rl, "value", cfg.rl) == "simpo" and len(self.models) > 1 else None
        self.attachment = attach(trainer, config_from_cfg(cfg), ref_model=ref_model)

    def post_train(self, cfg: Any, model: Any) -> None:
        # Axolotl saves the final model with save_pretrained, not trainer.save_model: write the
        # regularizer state beside it here (checkpoints get theirs from the attachment).
        if self.attachment is not None and self.attachment.runner is not None:
            self.attachment.save(cfg.output_dir)


class _SaveOnInterrupt(TrainerCallback):
    """While training runs, a SIGINT first writes the regularizer state into the output folder,
    then runs the handler that was installed (Axolotl's: save the model there and exit)."""

    def __init__(self, plugin: GANPOPlugin, output_dir: str) -> None:
        self.plugin, self.output_dir = plugin, output_dir
        self.previous: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if threading.current_thread() is threading.main_thread() and args.process_index == 0:
            self.previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        attachment = self.plugin.attachment
        if attachment is not None and attachment.runner is not None:
            attachment.save(self.output_dir)
        if callable(self.previous):
            self.previous(signum, frame)
        else:
            raise KeyboardInterrupt

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


def config_from_cfg(cfg: Any) -> RegularizerConfig:
    """The validated ``ganpo:`` block of a loaded Axolotl config (defaults when absent)."""
    block = _get(cfg, BLOCK)
    return parse_config(None if block is None else _plain(block))


def _get(cfg: Any, key: str) -> Any:
    return cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
