"""Per-sequence completion log-probabilities from captured hidden states, without ever holding
the full ``[N, T, V]`` logits.

A base preference loss the host does not compute (a GPO kind, SimPO on a DPO trainer) needs
``logp(y|x)`` summed over the response tokens. Rather than reading it out of a host's private
functions (which change between releases), the package computes it from what every host path
produces: the final hidden states (captured by :class:`~ganpo_plugins.adapter_kit.taps.HiddenStateTap`) and
the output-embedding layer's weight. Only positions that predict a completion token are
projected, a chunk of tokens at a time; under autograd each chunk is checkpointed, so the
backward pass recomputes one chunk's logits at a time instead of keeping them all. Peak extra
memory is about ``3 · chunk_tokens · V`` floats, whatever the sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["DEFAULT_CHUNK_TOKENS", "LogitHead", "completion_logps", "find_output_embeddings", "unwrap_once"]

DEFAULT_CHUNK_TOKENS = 512


def unwrap_once(model: Any) -> Any:
    """One level of wrapper down (``.module``, then ``.model``), or ``None`` at the bottom."""
    inner = getattr(model, "module", None)
    if not isinstance(inner, nn.Module):
        inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and inner is not model else None


def find_output_embeddings(model: Any) -> nn.Module:
    """The module whose input is the final hidden state, looking through known wrappers."""
    current = model
    for _ in range(8):
        get = getattr(current, "get_output_embeddings", None)
        if callable(get):
            emb = get()
            if isinstance(emb, nn.Module):
                return emb
        current = unwrap_once(current)
        if current is None:
            break
    raise TypeError(
        f"cannot find the output embeddings of {type(model).__name__}: expected a transformers "
        "model (get_output_embeddings) or a wrapper exposing it as .module or .model"
    )


@dataclass(frozen=True)
class LogitHead:
    """How a causal LM turns a final hidden state into next-token logits:
    ``logits = softcap(scale · (h Wᵀ + b))`` with ``softcap(z) = c · tanh(z / c)`` when the model
    caps its logits (Gemma 2's ``final_logit_softcapping``)."""

    weight: Tensor
    bias: Tensor | None = None
    scale: float = 1.0
    softcap: float | None = None

    @classmethod
    def of(cls, model: Any) -> LogitHead:
        """The head of a transformers causal LM (looking through wrappers)."""
        head = find_output_embeddings(model)
        if not isinstance(head, nn.Linear):
            raise TypeError(f"the output embeddings of {type(model).__name__} are not a Linear layer")
        config = _text_config(model)
        scale = getattr(config, "logit_scale", None)
        return cls(
            head.weight,
            head.bias,
            1.0 if scale is None else float(scale),
            getattr(config, "final_logit_softcapping", None),
        )

    def log_probs(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """``log softmax(logits(hidden))[targets]`` for ``hidden [M, H]``, ``targets [M]`` (fp32)."""
        logits = nn.functional.linear(hidden, self.weight, self.bias).float()
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def _text_config(model: Any) -> Any:
    current = model
    for _ in range(8):
        config = getattr(current, "config", None)
        if config is not None and hasattr(config, "vocab_size"):
            get_text = getattr(config, "get_text_config", None)
            return get_text() if callable(get_text) else config
        current = getattr(current, "module", None) or getattr(current, "model", None)
        if current is None:
            break
    return None


def completion_logps(
    hidden: Tensor,
    head: LogitHead,
    input_ids: Tensor,
    completion_mask: Tensor,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> Tensor:
    """``Σ_t log p(y_t | y_<t)`` over each row's completion tokens: ``[N]`` (fp32).

    ``hidden [N, T, H]`` are the final hidden states of ``input_ids [N, T]``; position ``t``
    predicts token ``t + 1``, which counts when ``completion_mask[:, t + 1]`` is set.
    """
    if hidden.shape[:2] != input_ids.shape or completion_mask.shape != input_ids.shape:
        raise ValueError(
            f"hidden states {tuple(hidden.shape)}, input_ids {tuple(input_ids.shape)} and completion mask "
            f"{tuple(completion_mask.shape)} must agree on [N, T]"
        )
    selected = completion_mask[:, 1:].bool()
    rows = selected.nonzero()[:, 0]
    states = hidden[:, :-1][selected]
    targets = input_ids[:, 1:][selected]
    parts = []
    recompute = torch.is_grad_enabled() and (states.requires_grad or head.weight.requires_grad)
    for start in range(0, targets.numel(), chunk_tokens):
        chunk = slice(start, start + chunk_tokens)
        if recompute:
            parts.append(checkpoint(head.log_probs, states[chunk], targets[chunk], use_reentrant=False))
        else:
            parts.append(head.log_probs(states[chunk], targets[chunk]))
    out = torch.zeros(input_ids.shape[0], device=hidden.device, dtype=torch.float32)
    if parts:
        out = out.index_add(0, rows, torch.cat(parts))
    return out
