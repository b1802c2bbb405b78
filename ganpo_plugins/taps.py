"""Capture last-layer hidden states from the host's own forwards (no extra forward, ever).

A forward pre-hook on the model's output embeddings (``lm_head``) sees exactly the output of
the decoder's final norm, whatever the architecture calls that norm. Wrappers are looked
through: DeepSpeed engines and DDP (``.module``), PEFT models, and containers holding the HF
model as ``.model`` (OpenRLHF's ``Actor``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["HiddenStateTap", "TapRecord", "find_output_embeddings"]


@dataclass(frozen=True)
class TapRecord:
    """One captured call: the hidden states, whether autograd was recording, and which
    tapped model (index into the tap's models) produced it."""

    hidden: Tensor
    grad_enabled: bool
    source: int


def find_output_embeddings(model: Any) -> nn.Module:
    """The module whose input is the final hidden state, looking through known wrappers."""
    current = model
    for _ in range(8):
        get = getattr(current, "get_output_embeddings", None)
        if callable(get):
            emb = get()
            if isinstance(emb, nn.Module):
                return emb
        inner = getattr(current, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(current, "model", None)
        if not isinstance(inner, nn.Module) or inner is current:
            break
        current = inner
    raise TypeError(
        f"cannot find the output embeddings of {type(model).__name__}: expected a transformers "
        "model (get_output_embeddings) or a wrapper exposing it as .module or .model"
    )


class HiddenStateTap:
    """Records the final hidden states of every forward of the given models, in call order.

    With LoRA the policy and its adapter-disabled reference are one module: the same hook
    fires twice (policy with grad, then reference without); each record says which.
    Use :meth:`take` once per step so no tensor outlives it; :meth:`close` removes the hooks.
    """

    def __init__(self, *models: Any) -> None:
        self.records: list[TapRecord] = []
        self.enabled = True
        self._handles = []
        hooked: dict[int, int] = {}
        for index, model in enumerate(models):
            module = find_output_embeddings(model)
            if id(module) in hooked:  # shared module (LoRA policy/reference): one hook
                continue
            hooked[id(module)] = index
            self._handles.append(module.register_forward_pre_hook(self._make_hook(index)))

    def _make_hook(self, index: int):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if self.enabled:
                self.records.append(TapRecord(args[0], torch.is_grad_enabled(), index))

        return hook

    def take(self) -> list[TapRecord]:
        """Return the records since the last call and forget them."""
        records, self.records = self.records, []
        return records

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.records.clear()

    def __enter__(self) -> HiddenStateTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
