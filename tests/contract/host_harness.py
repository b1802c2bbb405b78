"""The host-adapter contract: one suite every host adapter passes, each host reached through a small
harness that trains a tiny model with that host (its trainer in this process, or its real CLI in a
subprocess) and reads back what the run left.

What every adapter promises, asserted by :class:`HostAdapterContract`:

- exactly the adapter named by the harness claims the trainer; every other installed adapter
  declines it;
- the discriminators step once per optimiser step (gradient accumulation k: k micro-steps, the
  last one the boundary);
- a checkpoint holds the regularizer state of its step, and resuming from it restores that state
  exactly and continues as the uninterrupted run (regularizer and policy, bit for bit);
- weight 0 trains the policy bit for bit as the plain host does;
- a GPO kind the package computes (``savage``) is the base loss: the logged loss is
  ``f(βρ) + λ·adv``, ``βρ`` the host's own logged margin, at steps where it is not 0.

What the regularizer did is recorded by tests/contract/runner_spy.py (wrapping ``RegularizerRunner``
and ``Attachment``, which every adapter builds on), in this process or in the host's CLI process.

A new host: a harness here, and a test module holding a :class:`HostAdapterContract` subclass whose
class-scoped ``harness`` fixture returns it (tests/contract/test_host_adapter_contract_*.py). A
harness says which adapter claims the trainer (``adapter``), the log key of the host's βρ
(``margin_key``), and how to

- ``run(workdir, spec, config, resume_from)``: train a fresh tiny model (the same initial policy and
  data on every call) for ``spec`` with the regularizer ``config`` attached (a dict as a user writes
  it; ``None``: the plain host, no regularizer) and return a :class:`Run` whose ``record`` holds
  what the spy saw; with ``resume_from``, resume from that checkpoint of an earlier run;
- ``checkpoint(run, step)``: the folder the run's checkpoint of optimiser step ``step`` is in;
- ``policy_state(run)``, ``regularizer_state(run)``: the policy's weights and the regularizer's state
  when the run ended; ``train_logs(run)``: one entry per optimiser step with ``loss``,
  ``ganpo/adv_loss``, ``ganpo/d_pos/loss`` and ``margin_key``.

:class:`InProcessHarness` does ``run`` for a trainer built in this process (write ``build``,
``train``); :class:`CLIHarness` for a host CLI run in a subprocess (write ``command``). A host whose
adapter cannot replace the base loss sets ``test_gpo_kind_is_the_base_loss = None`` in its subclass.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from state_equality import assert_states_equal
from torch import Tensor

import ganpo_plugins
from ganpo_plugins import StepInfo
from ganpo_plugins.adapter_kit.checkpoint import state_path

from . import runner_spy
from .runner_spy import Record

SMALL_D = {"discriminator": {"d_model": 16, "num_heads": 2, "ffn_size": 32, "num_layers": 1}}
SPY = Path(runner_spy.__file__)


@dataclass(frozen=True)
class Spec:
    steps: int  # optimiser steps
    accumulation: int = 1  # micro-batches per optimiser step, one preference pair each
    save_at: int | None = None  # the optimiser step after which a checkpoint is written


@dataclass
class Run:
    spec: Spec
    workdir: Path
    config: dict[str, Any] | None
    record: Record = field(default_factory=Record)
    trainer: Any = None  # in-process harnesses: the trainer, and the handle ganpo_plugins.attach returned
    handle: Any = None


class HostHarness(ABC):
    adapter: ClassVar[str]  # the name (group ganpo_plugins.hosts) of the adapter that claims the trainer
    margin_key: ClassVar[str]  # the training-log key of the host's own βρ

    @abstractmethod
    def run(self, workdir: Path, spec: Spec, config: dict[str, Any] | None, resume_from: Path | None = None) -> Run:
        """Train a fresh tiny model (see the module docstring)."""

    @abstractmethod
    def checkpoint(self, run: Run, step: int) -> Path: ...

    @abstractmethod
    def policy_state(self, run: Run) -> dict[str, Tensor]: ...

    @abstractmethod
    def regularizer_state(self, run: Run) -> dict[str, Any]: ...

    @abstractmethod
    def train_logs(self, run: Run) -> list[dict[str, float]]: ...


class InProcessHarness(HostHarness):
    """A host whose trainer is built here: ``run`` builds it, attaches through ganpo_plugins.attach
    with the spy on, and trains."""

    @abstractmethod
    def build(self, run: Run) -> Any:
        """A fresh trainer for ``run.spec`` writing under ``run.workdir``."""

    @abstractmethod
    def train(self, run: Run, resume_from: Path | None) -> None: ...

    def run(self, workdir: Path, spec: Spec, config: dict[str, Any] | None, resume_from: Path | None = None) -> Run:
        run = Run(spec, workdir, config)
        run.trainer = self.build(run)
        undo = runner_spy.install(workdir / "spy")
        try:
            if config is not None:
                run.handle = ganpo_plugins.attach(run.trainer, config)
            self.train(run, resume_from)
        finally:
            undo()
        run.record = runner_spy.read(workdir / "spy")
        return run

    def regularizer_state(self, run: Run) -> dict[str, Any]:
        return run.handle.runner.regularizer.state_dict()


class CLIHarness(HostHarness):
    """A host trained by its CLI in a subprocess (``python runner_spy.py FOLDER -m MODULE ARGS``)."""

    timeout_s: ClassVar[float] = 600

    @abstractmethod
    def command(self, run: Run, resume_from: Path | None) -> tuple[str, list[str], Mapping[str, str]]:
        """The module to run as ``python -m``, its arguments and environment."""

    def run(self, workdir: Path, spec: Spec, config: dict[str, Any] | None, resume_from: Path | None = None) -> Run:
        run = Run(spec, workdir, config)
        workdir.mkdir(parents=True, exist_ok=True)
        module, args, env = self.command(run, resume_from)
        result = subprocess.run(
            [sys.executable, str(SPY), str(workdir / "spy"), "-m", module, *args],
            env=dict(env), cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=self.timeout_s,
        )  # fmt: skip
        (workdir / "log.txt").write_text(result.stdout)
        assert result.returncode == 0, f"exit {result.returncode}; log {workdir / 'log.txt'}:\n{result.stdout[-5000:]}"
        run.record = runner_spy.read(workdir / "spy")
        return run


def flags(prefix: str, config: Mapping[str, Any]) -> list[str]:
    """A nested config as ``--prefix.key.sub value`` flags."""
    out: list[str] = []
    for key, value in config.items():
        if isinstance(value, Mapping):
            out += flags(f"{prefix}.{key}", value)
        else:
            out += [f"{prefix}.{key}", str(value)]
    return out


class MiniDPOHarness(InProcessHarness):
    """The example third-party host (examples/third_party_host_adapter), installed by tests/contract/conftest.py."""

    adapter = "minidpo"
    margin_key = "margin"

    def build(self, run: Run) -> Any:
        from ganpo_example_host.loop import MiniDPOLoop, TinyLM, synthetic_pairs

        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = TinyLM()
        spec = run.spec
        pairs = synthetic_pairs(8, pairs=1)
        return MiniDPOLoop(model, pairs, max_steps=spec.steps, accumulation_steps=spec.accumulation)

    def train(self, run: Run, resume_from: Path | None) -> None:
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


class TransformersTrainerHarness(InProcessHarness):
    """A host whose trainer is a ``transformers.Trainer``: training, checkpoints and logs as it keeps them."""

    def train(self, run: Run, resume_from: Path | None) -> None:
        run.trainer.train(resume_from_checkpoint=None if resume_from is None else str(resume_from))

    def checkpoint(self, run: Run, step: int) -> Path:
        return Path(run.trainer.args.output_dir) / f"checkpoint-{step}"

    def policy_state(self, run: Run) -> dict[str, Tensor]:
        return run.trainer.model.state_dict()

    def train_logs(self, run: Run) -> list[dict[str, float]]:
        return [entry for entry in run.trainer.state.log_history if "loss" in entry]


class TRLHarness(TransformersTrainerHarness):
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

    @staticmethod
    def saving(spec: Spec) -> dict[str, Any]:
        if spec.save_at is None:
            return {"save_strategy": "no"}
        return {"save_strategy": "steps", "save_steps": spec.save_at}

    def build(self, run: Run) -> Any:
        from transformers import AutoModelForCausalLM
        from trl import DPOTrainer
        from trl_args import dpo_args

        spec = run.spec
        steps = {"max_steps": spec.steps, "gradient_accumulation_steps": spec.accumulation}
        args = dpo_args(run.workdir, **steps, **self.saving(spec))
        model = AutoModelForCausalLM.from_pretrained(self.model_dir)
        return DPOTrainer(model, args=args, train_dataset=self.pairs, processing_class=self.tokenizer)


class TRLCPOHarness(TRLHarness):
    """TRL's CPOTrainer running SimPO (no reference forward of its own: the adapter runs one, here
    on the frozen copy of the initial policy it takes at attach time)."""

    def build(self, run: Run) -> Any:
        from transformers import AutoModelForCausalLM
        from trl.experimental.cpo import CPOTrainer
        from trl_args import simpo_args

        spec = run.spec
        args = simpo_args(
            run.workdir, max_steps=spec.steps, gradient_accumulation_steps=spec.accumulation, **self.saving(spec)
        )
        model = AutoModelForCausalLM.from_pretrained(self.model_dir)
        return CPOTrainer(model, args=args, train_dataset=self.pairs, processing_class=self.tokenizer)


class AxolotlHarness(CLIHarness):
    """``python -m axolotl.cli.train`` on the tiny example config (examples/axolotl/tiny_dpo_ganpo.yml)
    pointed at the tiny assets; the plugin attaches to the trainer Axolotl builds, which the TRL
    adapter claims."""

    adapter = "trl"
    margin_key = "rewards/margins"
    EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "axolotl" / "tiny_dpo_ganpo.yml"

    def __init__(self, assets: Path, env: Mapping[str, str]) -> None:
        pytest.importorskip("axolotl.cli", reason="the Axolotl harness runs in tox -e axolotl-oldest")
        self.assets, self.env = assets, env

    def command(self, run: Run, resume_from: Path | None) -> tuple[str, list[str], Mapping[str, str]]:
        import yaml  # comes with Axolotl

        spec = run.spec
        cfg = yaml.safe_load(self.EXAMPLE.read_text())
        cfg.pop("warmup_ratio")
        cfg |= {
            "base_model": str(self.assets / "model"),
            "dataset_prepared_path": str(run.workdir.parent / "prepared"),  # shared by the runs: same data
            "output_dir": str(run.workdir / "out"),
            "micro_batch_size": 1,
            "gradient_accumulation_steps": spec.accumulation,
            "max_steps": spec.steps,
            "save_steps": spec.save_at or spec.steps,  # the last checkpoint holds the training log
            "learning_rate": 1.0e-3,
            "warmup_steps": 0,
        }
        cfg["datasets"][0]["path"] = str(self.assets / "prefs.jsonl")
        if run.config is None:
            del cfg["plugins"], cfg["ganpo"]
        else:
            cfg["ganpo"] = run.config
        if resume_from is not None:
            cfg["resume_from_checkpoint"] = str(shutil.copytree(resume_from, run.workdir / "out" / resume_from.name))
        (run.workdir / "cfg.yml").write_text(yaml.safe_dump(cfg))
        return "axolotl.cli.train", [str(run.workdir / "cfg.yml")], self.env

    def checkpoint(self, run: Run, step: int) -> Path:
        return run.workdir / "out" / f"checkpoint-{step}"

    def policy_state(self, run: Run) -> dict[str, Tensor]:
        from safetensors.torch import load_file

        return load_file(run.workdir / "out" / "model.safetensors")

    def regularizer_state(self, run: Run) -> dict[str, Any]:
        return torch.load(state_path(run.workdir / "out"), weights_only=True)["state"]

    def train_logs(self, run: Run) -> list[dict[str, float]]:
        state = json.loads((self.checkpoint(run, run.spec.steps) / "trainer_state.json").read_text())
        return [entry for entry in state["log_history"] if "loss" in entry]


class OpenRLHFHarness(CLIHarness):
    """``python -m ganpo_openrlhf.train_dpo`` (``openrlhf.cli.train_dpo`` for the plain host) on one
    CPU process, ZeRO-2, as tests/host_openrlhf runs it."""

    adapter = "openrlhf"
    margin_key = "margin"

    def __init__(self, assets: Path, env: Mapping[str, str]) -> None:
        pytest.importorskip("openrlhf", reason="the OpenRLHF harness runs in the OpenRLHF envs")
        from host_openrlhf import orl_host

        self.assets, self.env, self.orl = assets, env, orl_host

    def command(self, run: Run, resume_from: Path | None) -> tuple[str, list[str], Mapping[str, str]]:
        spec = run.spec
        extra = ["--ds.zero_stage", "2", "--ckpt.save_steps", str(spec.save_at or spec.steps + 1)]
        if resume_from is not None:  # OpenRLHF resumes from the `latest` tag of its checkpoint folder
            shutil.copytree(resume_from, run.workdir / "ckpt" / resume_from.name)
            (run.workdir / "ckpt" / "latest").write_text(resume_from.name)
            extra.append("--ckpt.load_enable")
        if run.config is not None:
            extra += flags("--ganpo", run.config)
        args = self.orl.dpo_args(
            self.assets, run.workdir, *extra, samples=spec.steps * spec.accumulation, batch=spec.accumulation, micro=1
        )
        module = "openrlhf.cli.train_dpo" if run.config is None else "ganpo_openrlhf.train_dpo"
        return module, args, self.orl.subprocess_env(self.env, nproc=1)

    def checkpoint(self, run: Run, step: int) -> Path:
        return run.workdir / "ckpt" / f"global_step{step}"

    def policy_state(self, run: Run) -> dict[str, Tensor]:
        from safetensors.torch import load_file

        return load_file(run.workdir / "model" / "model.safetensors")

    def regularizer_state(self, run: Run) -> dict[str, Any]:
        return torch.load(state_path(run.workdir / "model"), weights_only=True)["state"]

    def train_logs(self, run: Run) -> list[dict[str, float]]:
        logged = self.orl.scalars(run.workdir / "tb")
        names = {"train/loss": "loss", **{f"train/{key}": key for key in ("ganpo/adv_loss", "ganpo/d_pos/loss")}}
        entries = []
        for step in sorted(logged.get("train/loss", {})):
            entry = {name: logged[tag][step] for tag, name in names.items() if step in logged.get(tag, {})}
            entry["margin"] = logged["train/chosen_reward"][step] - logged["train/reject_reward"][step]
            entries.append(entry)
        return entries


FULL = Spec(steps=4, accumulation=2, save_at=2)  # the runs most cases read: a checkpoint half way


class HostAdapterContract:
    """The suite; a subclass provides the class-scoped ``harness`` fixture (see the module docstring).
    Each run is made once per class and shared by the cases that read it."""

    @pytest.fixture(scope="class")
    @classmethod
    def runs(cls, harness: HostHarness, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
        root = tmp_path_factory.mktemp(type(harness).__name__)
        made: dict[str, Run] = {}

        def get(name: str, spec: Spec, config: dict[str, Any] | None, resume_from: Path | None = None) -> Run:
            if name not in made:
                made[name] = harness.run(root / name, spec, config, resume_from)
            return made[name]

        return {"get": get}

    @staticmethod
    def full(harness: HostHarness, runs: dict[str, Any]) -> Run:
        return runs["get"]("full", FULL, SMALL_D)

    def test_only_its_adapter_claims_the_trainer(self, harness: HostHarness, runs: dict[str, Any]) -> None:
        claims = self.full(harness, runs).record.claims
        assert len(claims) == 1, claims  # one attachment per run
        (claim,) = claims
        assert claim["claimant"] == [harness.adapter], claim
        assert claim["others"] and not any(claim["others"].values()), claim  # every other adapter declined

    def test_discriminators_step_once_per_optimiser_step(self, harness: HostHarness, runs: dict[str, Any]) -> None:
        run = self.full(harness, runs)
        k, steps = FULL.accumulation, FULL.steps
        micro_steps = [StepInfo(is_boundary=False, accumulation_steps=k), StepInfo(accumulation_steps=k)]
        assert run.record.infos == micro_steps * steps
        state = harness.regularizer_state(run)
        assert state["disc_steps"] == state["policy_steps"] == steps
        for optimizer in state["optimizers"].values():  # AdamW stepped once per optimiser step
            assert {int(param["step"]) for param in optimizer["state"].values()} == {steps}
        logs = harness.train_logs(run)
        assert len(logs) == steps and all("ganpo/adv_loss" in e and "ganpo/d_pos/loss" in e for e in logs), logs

    def test_checkpoint_holds_the_state_and_resume_restores_it_exactly(
        self, harness: HostHarness, runs: dict[str, Any]
    ) -> None:
        first = self.full(harness, runs)
        checkpoint = harness.checkpoint(first, FULL.save_at)
        saved = torch.load(state_path(checkpoint), weights_only=True)["state"]
        assert saved["disc_steps"] == saved["policy_steps"] == FULL.save_at
        assert_states_equal(saved, first.record.saved[checkpoint.resolve()], "checkpoint")  # the state live at the save

        resumed = runs["get"]("resumed", FULL, SMALL_D, resume_from=checkpoint)
        assert len(resumed.record.loaded) == 1, list(resumed.record.loaded)
        assert_states_equal(next(iter(resumed.record.loaded.values())), saved, "restored")
        assert len(resumed.record.infos) == (FULL.steps - FULL.save_at) * FULL.accumulation  # it trained on
        assert_states_equal(harness.regularizer_state(resumed), harness.regularizer_state(first), "regularizer")
        assert_states_equal(harness.policy_state(resumed), harness.policy_state(first), "policy")

    def test_weight_zero_trains_as_the_plain_host(self, harness: HostHarness, runs: dict[str, Any]) -> None:
        plain = runs["get"]("plain", FULL, None)
        zero = runs["get"]("zero", FULL, {**SMALL_D, "weight": 0.0})
        assert all("ganpo/adv_loss" in e for e in harness.train_logs(zero))  # the regularizer ran
        assert len(zero.record.infos) == FULL.steps * FULL.accumulation and not plain.record.infos
        assert_states_equal(harness.policy_state(zero), harness.policy_state(plain), "policy")

    def test_gpo_kind_is_the_base_loss(self, harness: HostHarness, runs: dict[str, Any]) -> None:
        # one pair per step: the logged loss is that pair's
        run = runs["get"]("savage", Spec(steps=3), {**SMALL_D, "preference_loss": "savage", "weight": 0.5})
        logs = harness.train_logs(run)
        assert len(logs) == 3
        for entry in logs:
            savage = 1.0 / (1.0 + math.exp(entry[harness.margin_key])) ** 2  # f(x) = 1/(1+e^x)², x = βρ
            assert entry["loss"] == pytest.approx(savage + 0.5 * entry["ganpo/adv_loss"], rel=1e-5, abs=1e-6), entry
        assert any(abs(e[harness.margin_key]) > 1e-5 for e in logs)
