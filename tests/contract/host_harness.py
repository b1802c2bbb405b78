"""The host-adapter contract: one suite every host adapter passes, each host reached through a small
harness that builds a tiny trainer of that host and trains it.

The suite attaches through :func:`ganpo_plugins.attach` (whichever installed adapter claims the
trainer) and asserts what every adapter promises:

- exactly the adapter named by the harness claims the trainer; every other installed adapter
  declines it;
- the discriminators step once per optimiser step (gradient accumulation k: k micro-steps, the
  last one the boundary);
- a checkpoint holds the regularizer state of its step, and resuming from it restores that state
  exactly and continues as the uninterrupted run;
- weight 0 trains the policy bit for bit as the plain host does;
- a GPO kind the package computes (``savage``) is the base loss: the logged loss is
  ``f(βρ) + λ·adv``, ``βρ`` the host's own logged margin.

A new host: a :class:`HostHarness` subclass here and a test module holding a
:class:`HostAdapterContract` subclass whose ``harness`` fixture returns it. A host whose adapter
cannot replace the base loss sets ``test_gpo_kind_is_the_base_loss = None`` in that subclass.
Every adapter runs the regularizer through :class:`~ganpo_plugins.RegularizerRunner` (its handle's
``runner`` once training began), which the suite observes.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from state_equality import assert_states_equal
from torch import Tensor

import ganpo_plugins
from ganpo_plugins import LatentBatch, RegularizerRunner, StepInfo, parse_config
from ganpo_plugins.adapter_kit.checkpoint import state_path
from ganpo_plugins.plugins.registry import load_host_adapters

SMALL_D = {"discriminator": {"d_model": 16, "num_heads": 2, "ffn_size": 32, "num_layers": 1}}


@dataclass(frozen=True)
class Spec:
    steps: int  # optimiser steps
    accumulation: int = 1  # micro-batches per optimiser step, one preference pair each
    save_at: int | None = None  # the optimiser step after which a checkpoint is written


@dataclass
class Run:
    trainer: Any  # what ganpo_plugins.attach is given
    spec: Spec
    workdir: Path


class HostHarness(ABC):
    adapter: ClassVar[str]  # the name (group ganpo_plugins.hosts) of the adapter that claims the trainer
    margin_key: ClassVar[str]  # the training-log key of the host's own βρ

    @abstractmethod
    def build(self, workdir: Path, spec: Spec) -> Run:
        """A fresh trainer: the same initial policy and data on every call."""

    @abstractmethod
    def train(self, run: Run, resume_from: Path | None = None) -> None:
        """Train to ``spec.steps`` (from the checkpoint ``resume_from``, if given)."""

    @abstractmethod
    def checkpoint(self, run: Run, step: int) -> Path:
        """The folder the host wrote its checkpoint of optimiser step ``step`` to."""

    @abstractmethod
    def policy_state(self, run: Run) -> dict[str, Tensor]: ...

    @abstractmethod
    def train_logs(self, run: Run) -> list[dict[str, float]]:
        """The host's training log, one entry per optimiser step."""


class MiniDPOHarness(HostHarness):
    """The example third-party host (examples/third_party_host_adapter), installed by tests/contract/conftest.py."""

    adapter = "minidpo"
    margin_key = "margin"

    def build(self, workdir: Path, spec: Spec) -> Run:
        from ganpo_example_host.loop import MiniDPOLoop, TinyLM, synthetic_pairs

        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = TinyLM()
        loop = MiniDPOLoop(
            model, synthetic_pairs(8, pairs=1), max_steps=spec.steps, accumulation_steps=spec.accumulation
        )
        return Run(loop, spec, workdir)

    def train(self, run: Run, resume_from: Path | None = None) -> None:
        loop = run.trainer
        if resume_from is not None:
            loop.load(resume_from)
        if run.spec.save_at is not None and loop.step < run.spec.save_at:
            loop.train(run.spec.save_at - loop.step)
            loop.save(self.checkpoint(run, run.spec.save_at))
        loop.train(run.spec.steps - loop.step)

    def checkpoint(self, run: Run, step: int) -> Path:
        return run.workdir / f"checkpoint-{step}"

    def policy_state(self, run: Run) -> dict[str, Tensor]:
        return run.trainer.policy.state_dict()

    def train_logs(self, run: Run) -> list[dict[str, float]]:
        return run.trainer.metrics


class TRLHarness(HostHarness):
    """TRL's DPOTrainer on the tiny Llama of tests/conftest.py (``tiny_assets``)."""

    adapter = "trl"
    margin_key = "rewards/margins"

    def __init__(self, assets: Path) -> None:
        pytest.importorskip("trl", reason="the TRL harness runs in the TRL envs (tox -e trl-oldest / trl-newest)")
        from datasets import load_dataset
        from transformers import AutoTokenizer

        self.model_dir = assets / "model"
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.pairs = load_dataset("json", data_files=str(assets / "prefs.jsonl"), split="train").select(range(16))

    def build(self, workdir: Path, spec: Spec) -> Run:
        from host_trl.test_trl_attach import dpo_args
        from transformers import AutoModelForCausalLM
        from trl import DPOTrainer

        saving = {} if spec.save_at is None else {"save_strategy": "steps", "save_steps": spec.save_at}
        args = dpo_args(workdir, max_steps=spec.steps, gradient_accumulation_steps=spec.accumulation, **saving)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir)
        return Run(
            DPOTrainer(model, args=args, train_dataset=self.pairs, processing_class=self.tokenizer), spec, workdir
        )

    def train(self, run: Run, resume_from: Path | None = None) -> None:
        run.trainer.train(resume_from_checkpoint=None if resume_from is None else str(resume_from))

    def checkpoint(self, run: Run, step: int) -> Path:
        return Path(run.trainer.args.output_dir) / f"checkpoint-{step}"

    def policy_state(self, run: Run) -> dict[str, Tensor]:
        return run.trainer.model.state_dict()

    def train_logs(self, run: Run) -> list[dict[str, float]]:
        return [entry for entry in run.trainer.state.log_history if "loss" in entry]


class TRLCPOHarness(TRLHarness):
    """TRL's CPOTrainer running SimPO (no reference forward of its own: the adapter runs one, here
    on the frozen copy of the initial policy it takes at attach time)."""

    def build(self, workdir: Path, spec: Spec) -> Run:
        from transformers import AutoModelForCausalLM
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        saving = (
            {"save_strategy": "no"} if spec.save_at is None else {"save_strategy": "steps", "save_steps": spec.save_at}
        )
        args = CPOConfig(
            output_dir=str(workdir / "out"), use_cpu=True, per_device_train_batch_size=1, max_steps=spec.steps,
            gradient_accumulation_steps=spec.accumulation, logging_steps=1, report_to=[], learning_rate=1e-3,
            max_length=64, loss_type="simpo", cpo_alpha=0.0, simpo_gamma=0.5, beta=2.0, seed=0, **saving,
        )  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(self.model_dir)
        return Run(
            CPOTrainer(model, args=args, train_dataset=self.pairs, processing_class=self.tokenizer), spec, workdir
        )


@dataclass
class RunnerSpy:
    """What every RegularizerRunner did: the StepInfo of each step, and the regularizer state at
    each save (before writing) and each load (after reading), by folder."""

    infos: list[StepInfo | None] = field(default_factory=list)
    saved: dict[Path, dict[str, Any]] = field(default_factory=dict)
    loaded: dict[Path, dict[str, Any]] = field(default_factory=dict)


class HostAdapterContract:
    """The suite; a subclass provides the ``harness`` fixture (see the module docstring)."""

    @pytest.fixture
    def spy(self, monkeypatch: pytest.MonkeyPatch) -> RunnerSpy:
        spy = RunnerSpy()
        step, save, load = RegularizerRunner.step, RegularizerRunner.save, RegularizerRunner.load

        def spy_step(runner: RegularizerRunner, batch: LatentBatch, info: StepInfo | None) -> Tensor:
            spy.infos.append(info)
            return step(runner, batch, info)

        def spy_save(runner: RegularizerRunner, directory: Any) -> Path | None:
            spy.saved[Path(directory)] = copy.deepcopy(runner.regularizer.state_dict())
            return save(runner, directory)

        def spy_load(runner: RegularizerRunner, directory: Any) -> Path | None:
            path = load(runner, directory)
            spy.loaded[Path(directory)] = copy.deepcopy(runner.regularizer.state_dict())
            return path

        monkeypatch.setattr(RegularizerRunner, "step", spy_step)
        monkeypatch.setattr(RegularizerRunner, "save", spy_save)
        monkeypatch.setattr(RegularizerRunner, "load", spy_load)
        return spy

    @staticmethod
    def attach(run: Run, **config: Any) -> Any:
        return ganpo_plugins.attach(run.trainer, {**SMALL_D, **config})

    def test_only_its_adapter_claims_the_trainer(self, harness: HostHarness, tmp_path: Path) -> None:
        run = harness.build(tmp_path, Spec(steps=1))
        adapters = dict(load_host_adapters().list_name_plugin())
        assert harness.adapter in adapters, sorted(adapters)
        config = parse_config(SMALL_D)
        others = {
            name: plugin.ganpo_attach(trainer=run.trainer, config=config, options={})
            for name, plugin in adapters.items()
            if name != harness.adapter
        }
        assert others and all(claim is None for claim in others.values()), others
        handle = ganpo_plugins.attach(run.trainer, SMALL_D)  # so the claim is harness.adapter's
        assert handle.WRAPPED
        handle.detach()

    def test_discriminators_step_once_per_optimiser_step(
        self, harness: HostHarness, tmp_path: Path, spy: RunnerSpy
    ) -> None:
        run = harness.build(tmp_path, Spec(steps=3, accumulation=2))
        handle = self.attach(run)
        harness.train(run)
        assert spy.infos == [StepInfo(is_boundary=False, accumulation_steps=2), StepInfo(accumulation_steps=2)] * 3
        regularizer = handle.runner.regularizer
        assert regularizer.disc_steps == regularizer.policy_steps == 3
        for optimizer in regularizer.optimizers.values():
            assert {int(state["step"]) for state in optimizer.state.values()} == {3}  # AdamW stepped 3 times
        logs = harness.train_logs(run)
        assert len(logs) == 3 and all("ganpo/adv_loss" in e and "ganpo/d_pos/loss" in e for e in logs), logs

    def test_checkpoint_holds_the_state_and_resume_restores_it_exactly(
        self, harness: HostHarness, tmp_path: Path, spy: RunnerSpy
    ) -> None:
        spec = Spec(steps=4, accumulation=2, save_at=2)
        first = harness.build(tmp_path / "first", spec)
        handle = self.attach(first)
        harness.train(first)
        checkpoint = harness.checkpoint(first, 2)
        saved = torch.load(state_path(checkpoint), weights_only=True)["state"]
        assert saved["disc_steps"] == saved["policy_steps"] == 2
        assert_states_equal(saved, spy.saved[checkpoint], "checkpoint")  # the state live at the save

        resumed = harness.build(tmp_path / "resumed", spec)
        resumed_handle = self.attach(resumed)
        harness.train(resumed, resume_from=checkpoint)
        assert_states_equal(spy.loaded[checkpoint], saved, "restored")
        assert_states_equal(resumed_handle.runner.regularizer.state_dict(), handle.runner.regularizer.state_dict())
        assert_states_equal(harness.policy_state(resumed), harness.policy_state(first), "policy")

    def test_weight_zero_trains_as_the_plain_host(self, harness: HostHarness, tmp_path: Path) -> None:
        spec = Spec(steps=3, accumulation=2)
        plain = harness.build(tmp_path / "plain", spec)
        harness.train(plain)
        zero = harness.build(tmp_path / "zero", spec)
        self.attach(zero, weight=0.0)
        harness.train(zero)
        assert all("ganpo/adv_loss" in e for e in harness.train_logs(zero))  # the regularizer ran
        assert_states_equal(harness.policy_state(zero), harness.policy_state(plain), "policy")

    def test_gpo_kind_is_the_base_loss(self, harness: HostHarness, tmp_path: Path) -> None:
        run = harness.build(tmp_path, Spec(steps=3))  # one pair per step: the logged loss is that pair's
        self.attach(run, preference_loss="savage", weight=0.5)
        harness.train(run)
        logs = harness.train_logs(run)
        for entry in logs:
            savage = 1.0 / (1.0 + math.exp(entry[harness.margin_key])) ** 2  # f(x) = 1/(1+e^x)², x = βρ
            assert entry["loss"] == pytest.approx(savage + 0.5 * entry["ganpo/adv_loss"], rel=1e-5, abs=1e-6), entry
        assert any(abs(e[harness.margin_key]) > 1e-5 for e in logs)
