"""Layer 4, the host-adapter kit: everything a host adapter (``ganpo_trl``, ``ganpo_axolotl``,
``ganpo_openrlhf``, a third party's) uses, importable from here alone.

- the attachment and its ledger of host objects changed (:class:`Attachment`; for a
  ``transformers.Trainer``, :class:`TrainerAttachment`): a subclass overrides the public methods
  (``build_runner``) and calls the others (``wrap``, ``set_attribute``, ``install``,
  ``start_runner``, ``captured``, ``step_info``, ``choose_reference``, ``step_with_term``);
- the adapter loop (:class:`RegularizerRunner`) over hidden states from the host's own forwards
  (:class:`HiddenStateTap`), the regularizer state beside the host's checkpoints (:mod:`.checkpoint`);
- the rules between a host run's reported facts and a config (:class:`HostFacts`, :func:`check_host`),
  the version gate (:func:`require_host`), running a host's CLI with our flags (:func:`run_host_cli`),
  the ON line (:func:`announce_on`);
- the types and parsing the adapters hand on (``LatentBatch``, ``parse_config``, ...).

Names load on first use: the ``transformers.Trainer`` seams import transformers only when asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # the adapter loop and its state
    "Attachment": "adapter_kit.attachment",
    "RegularizerRunner": "adapter_kit.runner",
    "STATE_FILE": "adapter_kit.checkpoint",
    "HiddenStateTap": "adapter_kit.taps",
    "frozen_copy": "adapter_kit.taps",
    "hidden_size": "adapter_kit.taps",
    "reference_forward": "adapter_kit.taps",
    "require_weights": "adapter_kit.taps",
    # transformers.Trainer seams (import transformers)
    "SaveOnInterrupt": "adapter_kit.hf_trainer",
    "TrainerAttachment": "adapter_kit.hf_trainer",
    # host facts, versions, CLIs, messages
    "BaseLoss": "adapter_kit.rules",
    "HostFacts": "adapter_kit.rules",
    "check_host": "adapter_kit.rules",
    "HostVersionError": "adapter_kit.versions",
    "host_class": "adapter_kit.versions",
    "require_host": "adapter_kit.versions",
    "run_host_cli": "adapter_kit.launch",
    "announce_on": "adapter_kit.announce",
    # from the layers below, what adapters hand on
    "BLOCK": "config",
    "RegularizerConfig": "config",
    "refuse_misspelt_block": "config",
    "RegularizerBlock": "plugins.parse",
    "as_config": "plugins.parse",
    "parse_config": "plugins.parse",
    "hookimpl": "plugins.hookspecs",
    "LatentBatch": "regularizers.protocol",
    "RegularizerContext": "regularizers.protocol",
    "StepInfo": "regularizers.protocol",
    "prompt_completion_masks": "regularizers.protocol",
    "PairLogps": "formulas.preference",
    "chosen_then_rejected": "formulas.preference",
    "LogitHead": "formulas.logprobs",
    "completion_logps": "formulas.logprobs",
    "bradley_terry_loss": "formulas.functional",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ganpo_plugins.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
