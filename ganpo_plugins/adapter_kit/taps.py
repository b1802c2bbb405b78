"""Capture last-layer hidden states from the host's own forwards (no extra forward, ever).

The stable place to read them is the output of the decoder body (``get_decoder()``, e.g.
``LlamaForCausalLM.model``): its ``last_hidden_state`` is the final-norm output, whatever the
architecture calls that norm, and every host path still computes it — TRL's fused LM head
(``model(..., fused_lm_head=True)``, TRL ≥ 1.16) and Liger's fused losses skip ``lm_head``'s
forward, never the decoder's. A forward hook on the decoder body therefore fires on every
path. Models without a separate decoder body (a test double, an exotic wrapper) fall back to a
forward pre-hook on the output embeddings (``lm_head``), whose input is the same tensor.

Wrappers are looked through: DeepSpeed engines, DDP and FSDP (``.module``), PEFT models, and
containers holding the HF model as ``.model`` (OpenRLHF's ``Actor``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..formulas.logprobs import find_output_embeddings, unwrap_once

__all__ = [
    "HiddenStateTap",
    "TapRecord",
    "find_decoder",
    "find_output_embeddings",
    "frozen_copy",
    "hidden_size",
    "reference_forward",
    "require_weights",
]


@dataclass(frozen=True)
class TapRecord:
    """One captured call: the hidden states, whether autograd was recording, and which
    tapped model (index into the tap's models) produced it."""

    hidden: Tensor
    grad_enabled: bool
    source: int


def find_decoder(model: Any) -> nn.Module | None:
    """The decoder body of a causal LM (``get_decoder()``), looking through known wrappers;
    ``None`` when the model has none distinct from itself."""
    current = model
    for _ in range(8):
        get = getattr(current, "get_decoder", None)
        if callable(get):
            try:
                decoder = get()
            except (AttributeError, NotImplementedError, ValueError):
                decoder = None
            if isinstance(decoder, nn.Module) and decoder is not current and decoder is not model:
                return decoder
        current = unwrap_once(current)
        if current is None:
            break
    return None


def hidden_size(model: Any) -> int:
    """The width of the final hidden state (the output embeddings' input size)."""
    size = getattr(find_output_embeddings(model), "in_features", None)
    if size is None:
        raise TypeError(f"cannot read the hidden size of {type(model).__name__}: its output embeddings are not Linear")
    return int(size)


def _last_hidden_state(output: Any) -> Tensor:
    hidden = getattr(output, "last_hidden_state", None)
    return hidden if isinstance(hidden, Tensor) else output[0]


class HiddenStateTap:
    """Records the final hidden states of every forward of the given models, in call order.

    With LoRA the policy and its adapter-disabled reference are one module: the same hook
    fires twice (policy with grad, then reference without); each record says which.
    Use :meth:`take` once per step so no tensor outlives it; :meth:`close` removes the hooks.
    ``where`` says, per hooked model, which seam is used (``decoder`` or ``lm_head``).
    """

    def __init__(self, *models: Any) -> None:
        self.records: list[TapRecord] = []
        self.enabled = True
        self.where: list[str] = []
        self._handles: list[Any] = []
        hooked: set[int] = set()
        for index, model in enumerate(models):
            decoder = find_decoder(model)
            module = decoder if decoder is not None else find_output_embeddings(model)
            if id(module) in hooked:  # shared module (LoRA policy/reference): one hook
                continue
            hooked.add(id(module))
            if decoder is not None:
                self.where.append("decoder")
                self._handles.append(module.register_forward_hook(self._decoder_hook(index)))
            else:
                self.where.append("lm_head")
                self._handles.append(module.register_forward_pre_hook(self._lm_head_hook(index)))

    def _record(self, hidden: Tensor, index: int) -> None:
        if self.enabled:
            self.records.append(TapRecord(hidden, torch.is_grad_enabled(), index))

    def _decoder_hook(self, index: int):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self._record(_last_hidden_state(output), index)

        return hook

    def _lm_head_hook(self, index: int):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            self._record(args[0], index)

        return hook

    @contextlib.contextmanager
    def capturing(self) -> Iterator[list[TapRecord]]:
        """Record only inside this block (a host that also generates keeps the tap off outside
        its loss path); yields a list that holds the block's records once the block ends."""
        start, self.enabled = len(self.records), True
        new: list[TapRecord] = []
        try:
            yield new
        finally:
            self.enabled = False
            new.extend(self.records[start:])

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


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` in eval mode, running its class's ``forward`` on its own weights
    (a host's instance-level forward patch, e.g. TRL ≥ 1.16's fused LM head, closes over the
    original's bound forward and is dropped from the copy)."""
    copy = deepcopy(model).eval().requires_grad_(False)
    vars(copy).pop("forward", None)
    return copy


def require_weights(model: nn.Module) -> None:
    """Refuse a model whose weights are on the meta device (no forward can run on it)."""
    if any(p.is_meta for p in model.parameters()):
        raise ValueError(
            "the reference model the adapter runs has no weights on this rank (meta device): FSDP's "
            "cpu_ram_efficient_loading loads every rank but the first without weights, and a frozen copy of such a "
            "policy has none either; load the reference (or the policy, when the adapter copies it) with "
            "cpu_ram_efficient_loading off, or pass ref_model= a model with its weights"
        )


@torch.no_grad()
def reference_forward(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Final hidden states ``[B, T, H]`` of a no-grad forward of ``model``, read from its decoder body.

    The forward goes through the root module with ``logits_to_keep=1`` (one position's logits, not
    ``[B, T, V]``), never around it: under FSDP the root's pre-forward gathers the parameters it
    owns, and calling the decoder alone fails on sharded embeddings. It runs in eval mode, so it
    draws nothing from the host's random stream (dropout off)."""
    decoder = find_decoder(model)
    if decoder is None:
        raise TypeError(
            f"{type(model).__name__} exposes no decoder body (get_decoder()); the adapter's reference forward "
            "needs a transformers causal LM"
        )
    captured: list[Tensor] = []
    handle = decoder.register_forward_hook(lambda module, args, output: captured.append(_last_hidden_state(output)))
    try:
        with _eval_mode(model):
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(
            f"the reference forward ran its decoder body {len(captured)} times, expected once (is its forward "
            "patched to call another model's?)"
        )
    return captured[0]


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
