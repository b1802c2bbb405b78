"""Completion log-probabilities from hidden states: equal to the full-logits computation,
gradients included, chunk by chunk; and the decoder-body tap."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ganpo_plugins.adapter_kit.taps import HiddenStateTap, find_decoder
from ganpo_plugins.formulas.logprobs import LogitHead, completion_logps

N, T, H, V = 4, 7, 6, 13


def _reference_logps(hidden: torch.Tensor, head: LogitHead, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = nn.functional.linear(hidden, head.weight, head.bias).float() * head.scale
    if head.softcap is not None:
        logits = head.softcap * torch.tanh(logits / head.softcap)
    per_token = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (per_token * mask[:, 1:]).sum(1)


@pytest.mark.parametrize("chunk", [1, 3, 512])
@pytest.mark.parametrize(("scale", "softcap", "bias"), [(1.0, None, False), (0.5, 2.0, True)])
def test_equals_full_logits_with_gradients(chunk: int, scale: float, softcap: float | None, bias: bool) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(N, T, H, requires_grad=True)
    lin = nn.Linear(H, V, bias=bias)
    head = LogitHead(lin.weight, lin.bias, scale, softcap)
    ids = torch.randint(0, V, (N, T))
    mask = torch.zeros(N, T, dtype=torch.long)
    mask[0, 3:] = 1
    mask[1, 5:] = 1
    mask[3, 1:] = 1  # row 2: no completion token at all
    got = completion_logps(hidden, head, ids, mask, chunk_tokens=chunk)
    expected = _reference_logps(hidden, head, ids, mask)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert got[2] == 0
    weights = torch.tensor([1.0, -2.0, 3.0, 0.5])
    grads = torch.autograd.grad((got * weights).sum(), (hidden, lin.weight))
    grads_expected = torch.autograd.grad((expected * weights).sum(), (hidden, lin.weight))
    for g, e in zip(grads, grads_expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert grads[0][2].abs().sum() == 0 and grads[0][:, -1].abs().sum() == 0  # unused positions get nothing


def test_shape_mismatch_is_named() -> None:
    head = LogitHead(torch.randn(V, H))
    with pytest.raises(ValueError, match=r"hidden states \(2, 5, 6\), input_ids \(2, 4\)"):
        completion_logps(torch.randn(2, 5, H), head, torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4))


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, H)
        self.norm = nn.LayerNorm(H)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.norm(self.embed(ids)),)


class CausalLM(nn.Module):
    """The transformers shape: a decoder body and an lm_head the fused paths skip."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Decoder()
        self.lm_head = nn.Linear(H, V, bias=False)
        self.config = type("Config", (), {"vocab_size": V, "final_logit_softcapping": 3.0})()

    def get_decoder(self) -> nn.Module:
        return self.model

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, ids: torch.Tensor, fused: bool = False) -> torch.Tensor:
        hidden = self.model(ids)[0]
        # A fused head reads the weight directly: lm_head's own forward never runs.
        return hidden @ self.lm_head.weight.T if fused else self.lm_head(hidden)


@pytest.mark.parametrize("fused", [False, True])
def test_decoder_tap_fires_on_fused_and_plain_paths(fused: bool) -> None:
    torch.manual_seed(0)
    lm = CausalLM()
    assert find_decoder(lm) is lm.model
    ids = torch.randint(0, V, (2, 5))
    with HiddenStateTap(lm) as tap:
        assert tap.where == ["decoder"]
        lm(ids, fused=fused)
        (record,) = tap.take()
    torch.testing.assert_close(record.hidden, lm.model.norm(lm.model.embed(ids)))
    assert record.grad_enabled


def test_logit_head_reads_softcapping_from_the_config() -> None:
    lm = CausalLM()
    head = LogitHead.of(lm)
    assert head.weight is lm.lm_head.weight and head.softcap == 3.0 and head.scale == 1.0
