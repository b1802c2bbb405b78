"""Hidden-state taps, the runner that adapters share, the registry and the MMD regularizer."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from ganpo_plugins import LatentBatch, LatentRegularizer, MMDRegularizer, RegularizerContext, StepInfo, parse_config
from ganpo_plugins.adapter_kit.checkpoint import state_path
from ganpo_plugins.adapter_kit.runner import RegularizerRunner, split_policy_reference
from ganpo_plugins.adapter_kit.taps import HiddenStateTap, TapRecord, find_output_embeddings
from ganpo_plugins.plugins.registry import known_names, resolve
from ganpo_plugins.regularizers.protocol import prompt_completion_masks

H, V = 8, 11


class TinyLM(nn.Module):
    """The shape of a transformers causal LM: embeddings → final norm → lm_head."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(V, H)
        self.norm = nn.LayerNorm(H)
        self.lm_head = nn.Linear(H, V)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(self.embed(ids)))


class EngineLike(nn.Module):
    """A DeepSpeed-engine / DDP-like wrapper: the model sits under ``.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


class ActorLike(nn.Module):
    """An OpenRLHF-Actor-like container: the HF model sits under ``.model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


def test_find_output_embeddings_looks_through_wrappers() -> None:
    lm = TinyLM(0)
    assert find_output_embeddings(EngineLike(ActorLike(lm))) is lm.lm_head
    with pytest.raises(TypeError, match="cannot find the output embeddings"):
        find_output_embeddings(nn.Linear(2, 2))


def test_tap_records_final_norm_output_in_call_order_with_grad_mode() -> None:
    policy, ref = TinyLM(0), TinyLM(1)
    ids = torch.randint(0, V, (2, 5))
    with HiddenStateTap(policy, EngineLike(ref)) as tap:
        with torch.no_grad():
            ref(ids)
        policy(ids)
        records = tap.take()
        assert [(r.source, r.grad_enabled) for r in records] == [(1, False), (0, True)]
        torch.testing.assert_close(records[1].hidden, policy.norm(policy.embed(ids)))
        assert tap.take() == []  # nothing held past a step
    policy(ids)  # hooks removed on close
    assert tap.records == []


def test_shared_module_fires_twice_for_lora_style_reference() -> None:
    lm = TinyLM(0)
    ids = torch.randint(0, V, (2, 5))
    tap = HiddenStateTap(lm, lm)
    lm(ids)
    with torch.no_grad():
        lm(ids)
    records = tap.take()
    assert [(r.source, r.grad_enabled) for r in records] == [(0, True), (0, False)]
    policy, ref = split_policy_reference(records)
    assert policy.requires_grad and not ref.requires_grad
    tap.close()


def test_split_policy_reference_cases() -> None:
    a, b = torch.ones(1), torch.zeros(1)
    p, r = split_policy_reference([TapRecord(b, False, 1), TapRecord(a, True, 0)])
    assert p is a and torch.equal(r, b)
    p, r = split_policy_reference([TapRecord(a, False, 0), TapRecord(b, False, 0)])  # eval, LoRA: call order
    assert p is a
    with pytest.raises(RuntimeError, match="captured 3"):
        split_policy_reference([TapRecord(a, True, 0)] * 3)


def test_tap_captures_only_inside_capturing() -> None:
    lm = TinyLM(0)
    ids = torch.randint(0, V, (2, 5))
    with HiddenStateTap(lm) as tap:
        tap.enabled = False
        lm(ids)  # e.g. generation: not recorded
        with tap.capturing() as records:
            lm(ids)
        lm(ids)
        assert len(records) == 1 and len(tap.take()) == 1 and not tap.enabled


def test_runner_latents_check_coverage_and_take_the_adapters_own_reference() -> None:
    policy = TinyLM(0)
    runner = RegularizerRunner({"regularizer": "mmd"}, CTX, policy)
    ids = torch.randint(0, V, (4, 6))
    policy(ids)
    own_ref = torch.zeros(4, 6, H)
    p, r = runner.latents((4, 6), reference=lambda: own_ref)
    assert p.shape == (4, 6, H) and torch.equal(r, own_ref)
    policy(ids)
    with pytest.raises(RuntimeError, match=r"do not cover the batch \(4, 7\).*one hidden state per input token"):
        runner.latents((4, 7), reference=lambda: own_ref)
    policy(ids), policy(ids)
    with pytest.raises(RuntimeError, match="expected one policy forward per step, captured 2"):
        runner.latents((4, 6), reference=lambda: own_ref)
    runner.close()


def _batch(seed: int) -> LatentBatch:
    g = torch.Generator().manual_seed(seed)
    policy = torch.randn(4, 6, H, generator=g, requires_grad=True)
    ref = torch.randn(4, 6, H, generator=g)
    response = torch.zeros(4, 6, dtype=torch.bool)
    response[:, 2:] = True
    return LatentBatch.from_concatenated(policy, ref, torch.ones(4, 6), response)


SMALL = {"discriminator": {"d_model": 16, "num_heads": 2, "ffn_size": 16, "num_layers": 1}}
CTX = RegularizerContext(hidden_size=H, policy_lr=1e-3, total_steps=10)


def test_prompt_completion_masks_follow_a_left_truncated_prompt() -> None:
    prompt = torch.tensor([[0, 1, 1], [1, 1, 1]])  # left-padded
    completion = torch.tensor([[1, 1], [1, 0]])  # right-padded
    attention, response = prompt_completion_masks(prompt, completion, 5)  # nothing truncated
    assert attention.tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert response.tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 1, 0]]
    attention, response = prompt_completion_masks(prompt, completion, 4)  # the host kept the last 2 prompt tokens
    assert attention.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]] and response.tolist() == [[0, 0, 1, 1], [0, 0, 1, 0]]
    for length in (1, 6):  # shorter than the completion, longer than prompt + completion
        with pytest.raises(RuntimeError, match="one hidden state per input token"):
            prompt_completion_masks(prompt, completion, length)


def test_runner_steps_averages_metrics_and_separates_eval() -> None:
    runner = RegularizerRunner(SMALL, CTX, TinyLM(0))
    for s in range(3):
        term = runner.step(_batch(s), StepInfo())
        assert term.requires_grad
    with torch.no_grad():
        runner.step(_batch(9), None)
    assert runner.regularizer.disc_steps == 3  # eval did not update
    train = runner.pop_metrics("train")
    assert train["ganpo/d_pos/loss"] > 0 and "ganpo/adv_loss" in train
    assert runner.pop_metrics("train") == {}
    assert set(runner.pop_metrics("eval")) == {"ganpo/adv_loss", "ganpo/term_skipped"}
    runner.close()


def test_runner_save_load_round_trip_and_mismatch(tmp_path) -> None:
    runner = RegularizerRunner(SMALL, CTX, TinyLM(0))
    runner.step(_batch(0), StepInfo())
    path = runner.save(tmp_path / "checkpoint-1")
    assert path == state_path(tmp_path / "checkpoint-1") and path.exists()
    assert not list((tmp_path / "checkpoint-1").glob("*.tmp"))
    fresh = RegularizerRunner(SMALL, CTX, TinyLM(0))
    assert fresh.load(tmp_path / "checkpoint-1") == path
    for a, b in zip(
        runner.regularizer.discriminators.parameters(), fresh.regularizer.discriminators.parameters(), strict=True
    ):
        assert torch.equal(a, b)
    assert torch.equal(runner.regularizer.mu, fresh.regularizer.mu)
    other = RegularizerRunner({"regularizer": "mmd"}, CTX, TinyLM(0))
    with pytest.raises(ValueError, match="different regularizer architecture \\(regularizer: 'ganpo' → 'mmd'\\)"):
        other.load(tmp_path / "checkpoint-1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fresh.load(tmp_path / "nothing-here") is None
    assert "starts fresh" in str(caught[0].message)


def test_saved_state_loads_without_pickle_of_objects(tmp_path) -> None:
    runner = RegularizerRunner(SMALL, CTX, TinyLM(0))
    runner.step(_batch(0), StepInfo())
    path = runner.save(tmp_path)
    payload = torch.load(path, weights_only=True)  # raises on arbitrary objects
    assert payload["regularizer"] == "ganpo" and payload["config"]["discriminator"]["d_model"] == 16


def test_registry_lists_builtins_and_rejects_unknown() -> None:
    assert {"ganpo", "mmd"} <= set(known_names("regularizer"))
    assert {"transformer", "mlp"} <= set(known_names("discriminator"))
    assert {"logistic", "simpo", "savage"} <= set(known_names("preference_loss"))
    with pytest.raises(ValueError, match=r"unknown discriminator 'mpl'.*Did you mean 'mlp'"):
        resolve("discriminator", "mpl")


def test_mmd_regularizer_satisfies_protocol_and_pulls_toward_reference() -> None:
    reg = MMDRegularizer(parse_config({"regularizer": "mmd", "weight": 2.0}), CTX)
    assert isinstance(reg, LatentRegularizer)
    same = torch.randn(2, 5, H)
    batch = LatentBatch(
        same.clone().requires_grad_(True), same.clone(), same, same,
        *(torch.ones(2, 5, dtype=torch.bool) for _ in range(4)),
    )  # fmt: skip
    assert reg.policy_term(batch).loss.item() == pytest.approx(0.0, abs=1e-6)
    b = _batch(0)
    out = reg.policy_term(b)
    assert out.loss.item() == pytest.approx(2.0 * (out.metrics["mmd_chosen"] + out.metrics["mmd_rejected"]), rel=1e-5)
    out.loss.backward()
    assert reg.update(b, StepInfo()) == {} and reg.state_dict() == {}
