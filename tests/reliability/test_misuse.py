"""No silent wrong run: misuse by an adapter, a plugin author or a resume is refused or repaired
loudly. The refusals are the "Misuse at run time" table of docs/bad-input.md (driven here);
the repairs (non-finite terms, changed settings on resume) are checked below it."""

from __future__ import annotations

import errno
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from bad_input_table import table
from latents import H, make_batch

from ganpo_plugins import (
    LatentBatch,
    RegularizerContext,
    RegularizerOutput,
    RegularizerRunner,
    StepInfo,
    hookimpl,
)
from ganpo_plugins.adapter_kit import checkpoint as checkpoint_module
from ganpo_plugins.adapter_kit.checkpoint import state_path
from ganpo_plugins.plugins.registry import fresh_plugin_manager, register_plugin

CTX = RegularizerContext(hidden_size=H, policy_lr=2e-3, total_steps=20, warmup_steps=2, seed=0)
SMALL = {"discriminator": {"d_model": 16, "num_heads": 2, "ffn_size": 32, "num_layers": 1}}


class NaivePool:
    """A third-party regularizer as one might write it: masked mean by multiplication (inf · 0 =
    NaN at unselected positions), squared distance of the pooled chosen latents."""

    name = "naive_pool"

    def __init__(self, config, context) -> None:
        self.mask = config.mask
        self.weight = config.weight

    def update(self, batch, info):
        return {}

    def policy_term(self, batch: LatentBatch) -> RegularizerOutput:
        mask, _ = batch.positions(self.mask)
        w = mask.unsqueeze(-1).to(batch.policy_chosen.dtype)
        pooled = ((batch.policy_chosen - batch.ref_chosen) * w).sum(1) / w.sum(1).clamp_min(1.0)
        return RegularizerOutput(self.weight * pooled.pow(2).mean(), {"naive": pooled.pow(2).mean().item()})

    def state_dict(self):
        return {}

    def load_state_dict(self, state) -> None:
        pass


class NaivePlugin:
    @hookimpl
    def ganpo_regularizers(self):
        return {"naive_pool": NaivePool}


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    fresh_plugin_manager()
    register_plugin(NaivePlugin(), "test_misuse_plugin")
    yield
    fresh_plugin_manager()


def _with(batch: LatentBatch, field: str, where: tuple[int, int], value: float) -> LatentBatch:
    tensor = getattr(batch, field).detach().clone()
    tensor[where] = value
    return LatentBatch(**{**batch.__dict__, field: tensor.requires_grad_(field.startswith("policy"))})


def _saved_ganpo(directory: Path, **overrides) -> Path:
    runner = RegularizerRunner({**SMALL, **overrides}, CTX)
    runner.step(make_batch(0), StepInfo())
    return runner.save(directory)


# -- the refusals of docs/bad-input.md -------------------------------------------------------------


def _truncated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _saved_ganpo(tmp_path / "checkpoint-1")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    RegularizerRunner(SMALL, CTX).load(tmp_path / "checkpoint-1")


def _empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state_path(tmp_path).write_bytes(b"")
    RegularizerRunner(SMALL, CTX).load(tmp_path)


def _foreign(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.save({"weights": torch.ones(2)}, state_path(tmp_path))
    RegularizerRunner(SMALL, CTX).load(tmp_path)


def _architecture_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _saved_ganpo(tmp_path)
    bigger = {"discriminator": {**SMALL["discriminator"], "d_model": 32}, "max_positions": 64}
    RegularizerRunner(bigger, CTX).load(tmp_path)


def _options_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    RegularizerRunner({"regularizer": "mmd", "options": {"bandwidths": [1.0]}}, CTX).save(tmp_path)
    RegularizerRunner({"regularizer": "mmd", "options": {"bandwidths": [2.0]}}, CTX).load(tmp_path)


def _disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(obj, f) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full)
    RegularizerRunner(SMALL, CTX).save(tmp_path / "checkpoint-3")


def _short_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux)")
    real_save = torch.save
    # torch's own error for a short write: its zip writer writing to a device that is always full
    monkeypatch.setattr(checkpoint_module.torch, "save", lambda obj, f: real_save(obj, "/dev/full"))
    RegularizerRunner(SMALL, CTX).save(tmp_path / "checkpoint-3")


def _wrong_shape(field: str, tensor: torch.Tensor) -> Callable[..., object]:
    return lambda tmp_path, monkeypatch: LatentBatch(**{**make_batch(0).__dict__, field: tensor})


CASES: dict[str, Callable[..., object]] = {
    "LatentBatch.from_concatenated(policy [4, 6, 8], ref [4, 6, 8], attention [4, 5], response [4, 6])": (
        lambda tmp_path, monkeypatch: LatentBatch.from_concatenated(
            torch.zeros(4, 6, H), torch.zeros(4, 6, H), torch.ones(4, 5), torch.ones(4, 6)
        )
    ),
    "LatentBatch(...) with response_rejected [3, 6] and hidden states [3, 7, 8]": _wrong_shape(
        "response_rejected", torch.ones(3, 6, dtype=torch.bool)
    ),
    "LatentBatch(...) with ref_chosen [3, 5, 8] and policy_chosen [3, 7, 8]": _wrong_shape(
        "ref_chosen", torch.zeros(3, 5, H)
    ),
    "StepInfo(accumulation_steps=0)": lambda tmp_path, monkeypatch: StepInfo(accumulation_steps=0),
    "resume: discriminator.d_model 16 → 32, max_positions 2048 → 64": _architecture_changed,
    "resume: mmd options.bandwidths [1.0] → [2.0]": _options_changed,
    "resume: ganpo_regularizer.pt cut in half": _truncated,
    "resume: ganpo_regularizer.pt empty": _empty,
    "resume: ganpo_regularizer.pt holding something else": _foreign,
    "save: the disk is full (OSError ENOSPC)": _disk_full,
    "save: the disk is full (torch's short-write error)": _short_write,
}


ROWS = table("Misuse at run time")


def test_every_case_has_a_row_and_every_row_a_case() -> None:
    assert sorted(case for case, _ in ROWS) == sorted(CASES)


@pytest.mark.parametrize("case,fragments", ROWS, ids=[case for case, _ in ROWS])
def test_each_row_fails_with_its_message(case: str, fragments: list[str], tmp_path, monkeypatch) -> None:
    with pytest.raises((ValueError, OSError)) as info:
        CASES[case](tmp_path, monkeypatch)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from:\n{message}"


# -- 1. no non-finite term reaches the policy ------------------------------------------------------


@pytest.mark.parametrize("regularizer", ["mmd", "naive_pool"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_latents_where_the_mask_does_not_look_change_nothing(regularizer: str, value: float) -> None:
    runner = RegularizerRunner({"regularizer": regularizer}, CTX)  # mask: response (positions 3:)
    clean = make_batch(0)
    # a prompt position and a padding position (row 0 is padded at its last two positions)
    bad = _with(_with(clean, "policy_chosen", (1, 0), value), "ref_chosen", (0, 6), -value)
    expected = runner.step(clean, StepInfo())
    expected.backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: the bad values are never seen
        term = runner.step(bad, StepInfo())
    term.backward()
    assert torch.equal(term, expected)
    assert torch.isfinite(bad.policy_chosen.grad).all()
    torch.testing.assert_close(bad.policy_chosen.grad, clean.policy_chosen.grad)
    assert runner.pop_metrics()["ganpo/term_skipped"] == 0.0


def test_mmd_alone_ignores_non_finite_values_it_does_not_select() -> None:
    runner = RegularizerRunner({"regularizer": "mmd"}, CTX)
    bad = _with(make_batch(0), "policy_rejected", (2, 1), float("inf"))
    out = runner.regularizer.policy_term(bad)  # without the runner's zeroing
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(bad.policy_rejected.grad).all()


def test_a_non_finite_term_is_replaced_by_a_constant_zero_counted_and_warned_once() -> None:
    runner = RegularizerRunner({"regularizer": "naive_pool"}, CTX)
    weights = torch.ones(H, requires_grad=True)  # stands in for the policy's parameters
    poison = torch.zeros(3, 7, H)
    poison[1, 4] = float("nan")  # a selected (response) position
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner.step(make_batch(0), StepInfo())
        for seed in (1, 2):
            clean = make_batch(seed)
            bad = LatentBatch(**{**clean.__dict__, "policy_chosen": clean.policy_chosen.detach() * weights + poison})
            term = runner.step(bad, StepInfo())
            assert term.item() == 0.0 and not term.requires_grad
            host_loss = (clean.policy_chosen.detach() * weights).square().mean()
            (host_loss + term).backward()
        with torch.no_grad():
            assert runner.step(bad, None).item() == 0.0
    assert torch.isfinite(weights.grad).all()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "regularizer 'naive_pool' returned a non-finite policy term (nan)" in messages[0]
    assert "ganpo/term_skipped" in messages[0] and "mask='response'" in messages[0]
    assert runner.pop_metrics("train")["ganpo/term_skipped"] == pytest.approx(2 / 3)
    assert runner.pop_metrics("eval")["ganpo/term_skipped"] == 1.0


def test_ganpo_counts_its_own_skip_and_the_runner_keeps_the_count() -> None:
    runner = RegularizerRunner(SMALL, CTX)
    bad = _with(make_batch(0), "policy_chosen", (1, 4), float("nan"))
    with pytest.warns(RuntimeWarning) as caught:
        term = runner.step(bad, StepInfo())
    assert [str(w.message).split(";")[0] for w in caught] == ["GANPO: non-finite hidden states in a batch"]
    assert term.item() == 0.0 and not term.requires_grad
    metrics = runner.pop_metrics()
    assert metrics["ganpo/term_skipped"] == 1.0 and metrics["ganpo/skipped"] == 1.0


# -- 2. resume with a changed config ---------------------------------------------------------------


def test_architecture_change_is_refused_before_anything_loads(tmp_path) -> None:
    _saved_ganpo(tmp_path)
    bigger = {"discriminator": {**SMALL["discriminator"], "d_model": 32}, "max_positions": 64}
    runner = RegularizerRunner(bigger, CTX)
    before = [p.detach().clone() for p in runner.regularizer.discriminators.parameters()]
    with pytest.raises(ValueError) as info:
        runner.load(tmp_path)
    assert "discriminator.d_model: 16 → 32, max_positions: 2048 → 64" in str(info.value)
    assert all(torch.equal(a, b) for a, b in zip(before, runner.regularizer.discriminators.parameters(), strict=True))
    assert runner.regularizer.disc_steps == 0


def test_changed_hyper_parameters_follow_the_new_config_and_are_listed_once(tmp_path) -> None:
    saved = RegularizerRunner(SMALL, CTX)
    for s in range(3):
        saved.step(make_batch(s), StepInfo())
    saved.save(tmp_path)
    old_group = saved.regularizer.optimizers["pos"].param_groups[0]
    new_cfg = {
        **SMALL,
        "weight": 0.5,
        "optimizer": {"lr": 2 * saved.regularizer.base_lr, "betas": [0.5, 0.9], "weight_decay": 0.1},
    }
    resumed = RegularizerRunner(new_cfg, CTX)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed.load(tmp_path)
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "the resumed run follows the new config" in message
    for change in (
        "optimizer.betas: [0.9, 0.999] → [0.5, 0.9]",
        "optimizer.lr: None → 0.002",
        "optimizer.weight_decay: 0.01 → 0.1",
        "weight: 1.0 → 0.5",
    ):
        assert change in message
    for optimizer in resumed.regularizer.optimizers.values():
        group = optimizer.param_groups[0]
        assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.5, 0.9), 1e-8, 0.1)
        assert group["lr"] == pytest.approx(2 * old_group["lr"])  # same step of the schedule, base lr doubled
    saved_state = saved.regularizer.optimizers["pos"].state_dict()["state"]
    resumed_state = resumed.regularizer.optimizers["pos"].state_dict()["state"]
    assert all(torch.equal(saved_state[k]["exp_avg"], resumed_state[k]["exp_avg"]) for k in saved_state)
    assert resumed.regularizer.weight == 0.5


def test_a_key_added_after_the_save_counts_as_its_default(tmp_path) -> None:
    path = _saved_ganpo(tmp_path)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["saturation_patience"], payload["config"]["discriminator"]["dropout"]
    torch.save(payload, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RegularizerRunner(SMALL, CTX).load(tmp_path)
    with pytest.raises(ValueError, match=r"\(discriminator\.dropout: 0\.1 → 0\.0\)"):
        RegularizerRunner({**SMALL, "discriminator": {**SMALL["discriminator"], "dropout": 0.0}}, CTX).load(tmp_path)


def test_seed_patience_and_save_every_rank_change_silently(tmp_path) -> None:
    _saved_ganpo(tmp_path)
    resumed = RegularizerRunner({**SMALL, "seed": 7, "saturation_patience": 5, "save_every_rank": True}, CTX)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resumed.load(tmp_path) == state_path(tmp_path)
    assert resumed.regularizer.disc_steps == 1


def test_a_checkpoint_without_state_warns_where_the_schedule_starts(tmp_path) -> None:
    with pytest.warns(RuntimeWarning) as caught:
        assert RegularizerRunner(SMALL, CTX).load(tmp_path) is None
    message = str(caught[0].message)
    assert f"{tmp_path} holds no ganpo_regularizer.pt" in message
    assert "regularizer 'ganpo' starts fresh" in message
    assert "learning-rate schedule (warm-up included) from step 0, not from the policy's step" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stateless regularizer has nothing to lose
        assert RegularizerRunner({"regularizer": "mmd"}, CTX).load(tmp_path) is None


# -- 3. state files ---------------------------------------------------------------------------------


def test_the_temporary_file_is_written_beside_the_checkpoint_folder(tmp_path, monkeypatch) -> None:
    written: list[Path] = []
    real_save = torch.save

    def spy(obj, f) -> None:
        written.append(Path(f))
        real_save(obj, f)

    monkeypatch.setattr(checkpoint_module.torch, "save", spy)
    path = RegularizerRunner(SMALL, CTX).save(tmp_path / "checkpoint-1")
    assert written[0].parent == tmp_path.resolve() and written[0].name.endswith(".tmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]
    assert [p.name for p in path.parent.iterdir()] == ["ganpo_regularizer.pt"]


@pytest.mark.parametrize("fault", [_disk_full, _short_write], ids=["ENOSPC", "short_write"])
def test_a_full_disk_leaves_no_partial_file_and_the_previous_state_intact(fault, tmp_path, monkeypatch) -> None:
    folder = tmp_path / "checkpoint-3"
    first = _saved_ganpo(folder)
    content = first.read_bytes()
    with pytest.raises(OSError) as info:
        fault(tmp_path, monkeypatch)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value).startswith(f"[Errno 28] disk full while writing {first}: free space")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3"]
    assert [p.name for p in folder.iterdir()] == ["ganpo_regularizer.pt"] and first.read_bytes() == content


def test_other_write_errors_pass_through_and_leave_nothing(tmp_path, monkeypatch) -> None:
    def denied(obj, f) -> None:
        Path(f).write_bytes(b"partial")
        raise PermissionError(errno.EACCES, "Permission denied", str(f))

    monkeypatch.setattr(checkpoint_module.torch, "save", denied)
    with pytest.raises(PermissionError):
        RegularizerRunner(SMALL, CTX).save(tmp_path / "checkpoint-1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]
    assert list((tmp_path / "checkpoint-1").iterdir()) == []


# -- 4. adapter misuse that once ran silently --------------------------------------------------------


@pytest.mark.parametrize("steps", [0, -2])
def test_step_info_needs_at_least_one_accumulation_step(steps: int) -> None:
    with pytest.raises(ValueError, match=f"accumulation_steps must be >= 1.*got {steps}"):
        StepInfo(is_boundary=True, accumulation_steps=steps)


def test_the_largest_seed_torch_accepts_builds_and_trains_a_regularizer() -> None:
    runner = RegularizerRunner({**SMALL, "seed": 2**64 - 1}, CTX)
    runner.step(make_batch(0), StepInfo())
    assert runner.regularizer.disc_steps == 1
