"""The Axolotl plugin through the real CLI (``python -m axolotl.cli.train``), tiny model, CPU.

Each run trains one preference pair per step, so the numbers Axolotl logs per step describe
that pair: the loss must equal ``f(βρ) + λ·L_adv`` with ``βρ`` the logged reward margin and
``L_adv`` the logged ``ganpo/adv_loss`` — the base loss computed by hand here, never by the
code under test.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("axolotl.cli", reason="needs Axolotl: tox -e axolotl-oldest / axolotl-newest")

from bad_input_table import table

from ganpo_plugins import GANPORegularizer, RegularizerContext, parse_config

pytestmark = [pytest.mark.axolotl, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BETA = 0.1  # rl_beta of the example config
GPO_F: dict[str, Callable[[float], float]] = {  # docs/methods.md, f(x) at x = βρ
    "logistic": lambda x: math.log1p(math.exp(-x)),
    "squared": lambda x: (x - 1) ** 2,
    "exponential": lambda x: math.exp(-x),
    "truncated_quadratic": lambda x: max(0.0, 1 - x) ** 2,
    "savage": lambda x: 1 / (1 + math.exp(x)) ** 2,
}
# docs/bad-input.md is the test data: each row's overrides must fail with each listed fragment.
COMBINATIONS = [(json.loads(overrides), fragments) for overrides, fragments in table("Axolotl combinations")]


def _assert_loss_is(
    history: list[dict[str, Any]], base: Callable[[dict[str, Any]], float], weight: float = 1.0
) -> None:
    for entry in history:
        expected = base(entry) + weight * entry["ganpo/adv_loss"]
        assert entry["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6), entry


def _same(a: Any, b: Any) -> bool:
    """Exact equality of nested state (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


@pytest.fixture(scope="session")
def plain(axolotl_cfg: Callable[..., Any], axolotl_train: Callable[..., Any]) -> Any:
    return axolotl_train("plain", axolotl_cfg("plain", plugin=False))


@pytest.fixture(scope="session")
def dpo(axolotl_cfg: Callable[..., Any], axolotl_train: Callable[..., Any]) -> Any:
    return axolotl_train("dpo", axolotl_cfg("dpo"))


@pytest.mark.newest
def test_bad_ganpo_value_stops_the_run_before_any_model_loads(
    axolotl_cfg: Callable[..., Any], axolotl_train: Callable[..., Any]
) -> None:
    run = axolotl_train("bad", axolotl_cfg("bad", {"ganpo": {"weight": -1, "discriminator": {"d_modle": 8}}}))
    assert run.returncode != 0
    assert "ganpo.weight: weight must be a finite number >= 0; the paper uses 1.0 (got -1)" in run.log
    assert "ganpo.discriminator.d_modle: unknown key" in run.log and "Did you mean 'd_model'?" in run.log
    assert "Loading weights" not in run.log  # transformers never started loading a model
    assert not run.out.exists()


@pytest.mark.newest
def test_a_misspelt_block_is_refused_before_any_model_loads(
    axolotl_cfg: Callable[..., Any], axolotl_train: Callable[..., Any]
) -> None:
    cfg = axolotl_cfg("typo")
    cfg["gnapo"] = cfg.pop("ganpo")
    run = axolotl_train("typo", cfg)
    assert run.returncode != 0
    assert "unknown top-level key 'gnapo': did you mean 'ganpo'?" in run.log
    assert "Loading weights" not in run.log and not run.out.exists()


@pytest.mark.newest
def test_dpo_adds_the_term_logs_it_and_trains_the_discriminators(dpo: Any, plain: Any) -> None:
    dpo.assert_trained(4)
    plain.assert_ok()
    history, baseline = dpo.history(), plain.history()
    _assert_loss_is(history, lambda e: GPO_F["logistic"](e["rewards/margins"]))
    for ours, theirs in zip(history, baseline, strict=True):
        assert "ganpo/adv_loss" not in theirs
        assert theirs["loss"] == pytest.approx(GPO_F["logistic"](theirs["rewards/margins"]), rel=1e-5)
        assert abs(ours["loss"] - theirs["loss"]) > 1e-3  # the plain run lacks λ·L_adv
    # Discriminator weights moved away from their initial values, which the seed fixes.
    config = parse_config(dpo.cfg["ganpo"])
    initial = GANPORegularizer(config, RegularizerContext(hidden_size=64, policy_lr=1e-3, total_steps=4, seed=42))
    saved = dpo.regularizer_state(4)
    assert saved["config"] == config.model_dump(mode="json")
    init_params = initial.discriminators.state_dict()
    trained = saved["state"]["discriminators"]
    assert init_params.keys() == trained.keys()
    weights = [k for k in init_params if k.endswith(("weight", "original", "bias", "pos_embedding"))]
    assert weights and all(not torch.equal(init_params[k], trained[k]) for k in weights)
    assert dpo.regularizer_state(2)["state"]["disc_steps"] == 2
    assert (dpo.out / "ganpo_regularizer.pt").exists()  # the final save too


def test_dpo_block_is_parsed_once_on_its_way_to_the_regularizer(
    axolotl_cfg: Callable[..., Any], axolotl_workdir: Path, run_cli: Callable[..., Any]
) -> None:
    """From the YAML block to the regularizer the config is parsed once, at Axolotl's config
    validation (``GANPOArgs``): the plugin, the TRL adapter and the runner take that object as it
    is. Counted by wrapping the one parser around the real CLI (tests/host_axolotl/count_config_parses.py)."""
    import yaml

    folder = axolotl_workdir / "parse-count"
    folder.mkdir()
    cfg = axolotl_cfg("parse-count", {"max_steps": 1, "save_steps": None})
    (folder / "cfg.yml").write_text(yaml.safe_dump(cfg))
    counter = REPO / "tests/host_axolotl/count_config_parses.py"
    result = run_cli([str(counter), str(folder / "cfg.yml")], log=folder / "log.txt", cwd=folder)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "ganpo: ganpo regularizer ON" in result.stdout  # the parsed block reached the attach
    assert "ganpo config parses: 1\n" in result.stdout


# Weight 0 trains as plain Axolotl does, bit for bit: the host contract (tests/contract, AxolotlHarness).


@pytest.mark.newest
def test_resume_restores_the_regularizer_exactly(
    dpo: Any, axolotl_cfg: Callable[..., Any], axolotl_train: Callable[..., Any]
) -> None:
    dpo.assert_ok()
    cfg = axolotl_cfg("resume")
    start = dpo.checkpoint(2)
    resumed_from = shutil.copytree(start, f"{cfg['output_dir']}/{start.name}")
    run = axolotl_train("resume", {**cfg, "resume_from_checkpoint": str(resumed_from)})
    run.assert_ok()
    assert _same(run.regularizer_state(4)["state"], dpo.regularizer_state(4)["state"])
    assert [e["loss"] for e in run.history()[-2:]] == [e["loss"] for e in dpo.history()[-2:]]


@pytest.mark.newest
def test_lora_reference_with_a_gpo_loss(axolotl_cfg: Callable[..., Any], axolotl_train: Callable[..., Any]) -> None:
    lora = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_linear": True}
    run = axolotl_train("lora", axolotl_cfg("lora", {**lora, "ganpo": {"preference_loss": "savage"}}))
    run.assert_trained(4)
    assert (run.checkpoint(4) / "adapter_model.safetensors").exists()
    _assert_loss_is(run.history(), lambda e: GPO_F["savage"](e["rewards/margins"]))


@pytest.mark.parametrize("kind", ["squared", "exponential", "truncated_quadratic"])
def test_gpo_kind_is_the_base_loss(
    kind: str, axolotl_cfg: Callable[..., Any], axolotl_train: Callable[..., Any]
) -> None:
    run = axolotl_train(kind, axolotl_cfg(kind, {"max_steps": 3, "save_steps": 3, "ganpo": {"preference_loss": kind}}))
    run.assert_trained(3)
    history = run.history()
    assert any(abs(e["rewards/margins"]) > 1e-5 for e in history[1:])  # f is probed away from 0 too
    _assert_loss_is(history, lambda e: GPO_F[kind](e["rewards/margins"]))


@pytest.mark.newest
def test_precomputed_reference_with_savage(axolotl_cfg: Callable[..., Any], axolotl_train: Callable[..., Any]) -> None:
    overrides = {"precompute_ref_log_probs": True, "max_steps": 3, "save_steps": 3}
    run = axolotl_train("precompute", axolotl_cfg("precompute", {**overrides, "ganpo": {"preference_loss": "savage"}}))
    run.assert_trained(3)
    assert "extra no-grad forward of the reference model" in run.log  # the adapter ran the reference itself
    history = run.history()
    assert any(abs(e["rewards/margins"]) > 1e-5 for e in history[1:])
    _assert_loss_is(history, lambda e: GPO_F["savage"](e["rewards/margins"]))


def test_ipo_keeps_axolotls_ipo_loss(axolotl_cfg: Callable[..., Any], axolotl_train: Callable[..., Any]) -> None:
    run = axolotl_train("ipo", axolotl_cfg("ipo", {"rl": "ipo", "max_steps": 2}))
    run.assert_trained(2)
    first = run.history()[0]  # policy == reference: ρ = 0, TRL's IPO is (0 − 1/(2β))²
    assert first["rewards/margins"] == 0
    assert first["loss"] == pytest.approx(1 / (2 * BETA) ** 2 + first["ganpo/adv_loss"], rel=1e-6)


@pytest.mark.newest
def test_simpo_uses_the_second_model_as_reference(
    axolotl_cfg: Callable[..., Any], axolotl_train: Callable[..., Any]
) -> None:
    gamma, beta = 0.5, 2.0
    overrides = {"rl": "simpo", "rl_beta": beta, "simpo_gamma": gamma, "cpo_alpha": 0.0, "max_steps": 3}
    run = axolotl_train("simpo", axolotl_cfg("simpo", {**overrides, "save_steps": 3}))
    run.assert_trained(3)
    assert "frozen copy of the policy" not in run.log  # Axolotl's second model served as reference

    def simpo(e: dict[str, Any]) -> float:  # logps/* are SimPO's length-averaged log-probabilities
        z = beta * (e["logps/chosen"] - e["logps/rejected"]) - gamma
        return math.log1p(math.exp(-z))

    _assert_loss_is(run.history(), simpo)


@pytest.mark.parametrize(("overrides", "fragments"), COMBINATIONS, ids=[json.dumps(o) for o, _ in COMBINATIONS])
def test_unsupported_combinations_fail_at_config_validation(
    overrides: dict[str, Any], fragments: list[str], axolotl_cfg: Callable[..., Any]
) -> None:
    from axolotl.cli.config import prepare_plugins
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(axolotl_cfg("validation", overrides))
    prepare_plugins(cfg)
    with pytest.raises(ValueError) as info:
        validate_config(cfg)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} missing from:\n{info.value}"


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples/axolotl").glob("*.yml")))
def test_example_configs_pass_axolotls_validation(example: str, example_config: Callable[..., Any]) -> None:
    """The GPU configs cannot train here, but Axolotl validates them as on an 8-GPU bf16 node."""
    from axolotl.cli.config import prepare_plugins
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(example_config(f"examples/axolotl/{example}"))
    prepare_plugins(cfg)
    gpus = {"bf16": True, "fp8": False, "n_gpu": 8, "n_node": 1, "compute_capability": "sm_90"}
    validated = validate_config(cfg, capabilities=gpus, env_capabilities={"torch_version": "2.13.0"})
    assert validated.plugins == ["ganpo_axolotl.GANPOPlugin"]
    assert parse_config(validated.ganpo) == parse_config(cfg.ganpo)
