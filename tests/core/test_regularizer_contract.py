"""The LatentRegularizer contract, checked on every regularizer the registry knows: the built-ins,
the example third-party plugin (examples/third_party_regularizer) and a learned regularizer
written here on :class:`~ganpo_plugins.regularizers.learned.LearnedRegularizer`, both registered through the
same hook an installed plugin uses."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from latents import H, make_batch
from state_equality import assert_states_equal
from torch import Tensor, nn

from ganpo_plugins import (
    LatentBatch,
    LatentRegularizer,
    LearnedRegularizer,
    RegularizerContext,
    RegularizerOutput,
    RegularizerRunner,
    StepInfo,
    build_regularizer,
    hookimpl,
    parse_config,
)
from ganpo_plugins.formulas.functional import masked_mean
from ganpo_plugins.plugins.registry import fresh_plugin_manager, known_names, register_plugin
from ganpo_plugins.regularizers.protocol import Metrics

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/third_party_regularizer/ganpo_example_plugin/__init__.py"


class TinyCritic(LearnedRegularizer):
    """One logistic critic per side on pooled latents: the smallest adversarial regularizer."""

    label = "tiny_critic"

    def build_discriminators(self, context: RegularizerContext) -> nn.ModuleDict:
        return nn.ModuleDict(
            {
                side: nn.Sequential(nn.Linear(context.hidden_size, 8), nn.Dropout(0.1), nn.GELU(), nn.Linear(8, 1))
                for side in ("chosen", "rejected")
            }
        )

    def _pooled(self, batch: LatentBatch) -> dict[str, tuple[Tensor, Tensor]]:
        mask_c, mask_r = batch.positions(self.mask)
        return {
            "chosen": (masked_mean(batch.policy_chosen.float(), mask_c), masked_mean(batch.ref_chosen.float(), mask_c)),
            "rejected": (
                masked_mean(batch.policy_rejected.float(), mask_r),
                masked_mean(batch.ref_rejected.float(), mask_r),
            ),
        }

    def discriminator_loss(self, batch: LatentBatch) -> tuple[Tensor, Metrics] | None:
        loss = sum(
            F.softplus(-self.discriminators[side](ref)).mean()
            + F.softplus(self.discriminators[side](policy.detach())).mean()
            for side, (policy, ref) in self._pooled(batch).items()
        )
        return loss, {"critic_loss": loss.item()}

    def policy_term(self, batch: LatentBatch) -> RegularizerOutput:
        with self._frozen_eval():
            adv = sum(
                F.softplus(-self.discriminators[side](policy)).mean()
                for side, (policy, _) in self._pooled(batch).items()
            )
        return RegularizerOutput(self.weight * adv, {"adv": adv.item()})


class TinyCriticPlugin:
    @hookimpl
    def ganpo_regularizers(self):
        return {"tiny_critic": TinyCritic}


def _example_plugin() -> Any:
    spec = importlib.util.spec_from_file_location("ganpo_example_plugin", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXAMPLE_PLUGIN = _example_plugin()


def _register() -> None:
    fresh_plugin_manager()
    register_plugin(TinyCriticPlugin(), "tiny_critic")
    register_plugin(EXAMPLE_PLUGIN, "latent_l2")


_register()
NAMES = known_names("regularizer")
fresh_plugin_manager()

# Small settings where a regularizer's defaults would be slow; every name runs, listed or not.
SMALL = {"ganpo": {"discriminator": {"d_model": 16, "num_heads": 2, "ffn_size": 32, "num_layers": 1}}}
CTX = RegularizerContext(hidden_size=H, policy_lr=2e-3, total_steps=20, warmup_steps=0, seed=0)


@pytest.fixture(autouse=True)
def plugins() -> Iterator[None]:
    _register()
    yield
    fresh_plugin_manager()


def _build(name: str, **overrides: Any) -> LatentRegularizer:
    return build_regularizer(parse_config({**SMALL.get(name, {}), "regularizer": name, **overrides}), CTX)


def _train(reg: LatentRegularizer, steps: range) -> list[float]:
    """Updates with accumulation 2 (boundaries on odd steps) and each step's policy term."""
    terms = []
    for s in steps:
        reg.update(make_batch(s, requires_grad=False), StepInfo(is_boundary=s % 2 == 1, accumulation_steps=2))
        terms.append(reg.policy_term(make_batch(100 + s, requires_grad=False)).loss.item())
    return terms


def _parameters(reg: LatentRegularizer) -> list[Tensor]:
    return [p for value in vars(reg).values() if isinstance(value, nn.Module) for p in value.parameters()]


def test_the_suite_covers_the_built_ins_and_both_plugins() -> None:
    assert {"ganpo", "mmd", "latent_l2", "tiny_critic"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_the_policy_only_through_its_latents(name: str) -> None:
    reg = _build(name)
    learning = make_batch(0)
    reg.update(learning, StepInfo())
    assert learning.policy_chosen.grad is None and learning.policy_rejected.grad is None  # update detaches
    batch = make_batch(1)
    refs = [batch.ref_chosen.requires_grad_(), batch.ref_rejected.requires_grad_()]
    params = _parameters(reg)
    loss = reg.policy_term(batch).loss
    grads = torch.autograd.grad(loss, [batch.policy_chosen, batch.policy_rejected, *refs, *params], allow_unused=True)
    policy, ref, own = grads[:2], grads[2:4], grads[4:]
    assert all(g is not None and g.abs().sum() > 0 for g in policy)
    assert all(g is None or not g.any() for g in ref)
    assert all(g is None for g in own)  # the regularizer's parameters are not in the term's graph


@pytest.mark.parametrize("name", NAMES)
def test_zero_weight_gives_zero_gradient(name: str) -> None:
    reg = _build(name, weight=0.0)
    reg.update(make_batch(0, requires_grad=False), StepInfo())
    batch = make_batch(1)
    reg.policy_term(batch).loss.backward()
    assert all(g is None or not g.any() for g in (batch.policy_chosen.grad, batch.policy_rejected.grad))


@pytest.mark.parametrize("name", NAMES)
def test_a_restored_copy_continues_bit_for_bit(name: str, tmp_path: Path) -> None:
    reg = _build(name)
    _train(reg, range(4))
    torch.save(reg.state_dict(), tmp_path / "state.pt")
    restored = _build(name, seed=1)  # a different start: everything that matters comes from the state
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert _train(restored, range(4, 8)) == _train(reg, range(4, 8))
    assert_states_equal(restored.state_dict(), reg.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_the_host_rng_is_untouched(name: str) -> None:
    reg = _build(name)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    _train(reg, range(2))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_leaves_the_state_unchanged(name: str) -> None:
    reg = _build(name)
    _train(reg, range(2))
    before = copy.deepcopy(reg.state_dict())
    with torch.no_grad():
        reg.policy_term(make_batch(50))
    assert_states_equal(reg.state_dict(), before)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("position", [0, 4], ids=["unseen", "seen"])  # a prompt, a response position
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_latents_never_reach_the_policy(name: str, position: int, value: float) -> None:
    runner = RegularizerRunner({**SMALL.get(name, {}), "regularizer": name}, CTX)
    runner.step(make_batch(0, requires_grad=False), StepInfo())
    batch = make_batch(1)
    with torch.no_grad():
        batch.policy_chosen[1, position] = value
        batch.ref_rejected[2, position] = value
    with pytest.warns(RuntimeWarning) if position else _no_warnings():
        loss = runner.step(batch, StepInfo())
    assert bool(torch.isfinite(loss))
    if loss.requires_grad:  # a skipped term is a constant
        loss.backward()
    assert all(
        bool(torch.isfinite(g).all()) for g in (batch.policy_chosen.grad, batch.policy_rejected.grad) if g is not None
    )
    with torch.no_grad():
        assert bool(torch.isfinite(runner.step(batch, None)))
    later = make_batch(2)
    runner.step(later, StepInfo())
    assert all(bool(torch.isfinite(p).all()) for p in _parameters(runner.regularizer))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sizes", [(3, 1), (1, 4)], ids=["3+1-", "1+4-"])
def test_unpaired_sides_of_different_sizes_train_and_reach_the_policy(name: str, sizes: tuple[int, int]) -> None:
    """Online RL's sides (docs/methods.md): chosen and rejected latents of different batch sizes."""
    runner = RegularizerRunner({**SMALL.get(name, {}), "regularizer": name}, CTX)
    b, b_rejected = sizes
    with _no_warnings():
        for s in range(4):
            info = StepInfo(is_boundary=s % 2 == 1, accumulation_steps=2)
            runner.step(make_batch(s, b=b, b_rejected=b_rejected, requires_grad=False), info)
        batch = make_batch(10, b=b, b_rejected=b_rejected)
        loss = runner.step(batch, StepInfo())
    assert bool(torch.isfinite(loss))
    loss.backward()
    assert all(g is not None and g.abs().sum() > 0 for g in (batch.policy_chosen.grad, batch.policy_rejected.grad))
    metrics = runner.pop_metrics()
    assert metrics["ganpo/term_skipped"] == 0.0 and all(v == v for v in metrics.values())  # no NaN


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("empty", ["chosen", "rejected"])
def test_an_empty_side_adds_no_term_and_learns_nothing(name: str, empty: str) -> None:
    """Every advantage of one sign: no term, no NaN, no warning; the learned modules stay as they were."""
    runner = RegularizerRunner({**SMALL.get(name, {}), "regularizer": name}, CTX)
    runner.step(make_batch(0, requires_grad=False), StepInfo())
    runner.pop_metrics()
    before = [p.detach().clone() for p in _parameters(runner.regularizer)]
    sizes = {"b": 0, "b_rejected": 3} if empty == "chosen" else {"b": 3, "b_rejected": 0}
    batch = make_batch(1, **sizes)
    with _no_warnings():
        loss = runner.step(batch, StepInfo())
        assert loss.item() == 0.0 and not loss.requires_grad
        with torch.no_grad():
            assert runner.step(batch, None).item() == 0.0
    assert runner.pop_metrics()["ganpo/term_skipped"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, _parameters(runner.regularizer), strict=True))


@contextlib.contextmanager
def _no_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# -- what LearnedRegularizer does for a subclass (TinyCritic writes none of it) ------------------------


def test_a_learned_regularizer_steps_only_at_boundaries_on_the_policys_schedule() -> None:
    reg = _build("tiny_critic", optimizer={"warmup_steps": 2, "update_ratio": 2})
    lrs = []
    for s in range(6):
        reg.update(make_batch(s, requires_grad=False), StepInfo(is_boundary=s % 2 == 1, accumulation_steps=2))
        lrs.append(reg.optimizers["chosen"].param_groups[0]["lr"])
        assert reg.disc_steps == 2 * ((s + 1) // 2) and reg.policy_steps == (s + 1) // 2
    # lr of the next step: base 1e-3 · factor(policy_steps), warm-up 2 of 20 → 0, ½, 1 then cosine
    assert lrs[1] == pytest.approx(0.5e-3) and lrs[3] == pytest.approx(1e-3)


def test_a_learned_regularizer_skips_a_non_finite_update() -> None:
    reg = _build("tiny_critic")
    before = [p.detach().clone() for p in reg.discriminators.parameters()]
    batch = make_batch(0, requires_grad=False)
    batch.ref_chosen[:, 4] = float("nan")
    with pytest.warns(RuntimeWarning, match="tiny_critic: non-finite discriminator loss"):
        metrics = reg.update(batch, StepInfo())
    assert metrics["skipped"] == 1.0 and reg.skipped_updates == 1 and reg.disc_steps == 0
    assert all(torch.equal(a, b) for a, b in zip(before, reg.discriminators.parameters(), strict=True))
