"""Real LLaMA-Factory CLI runs (``python -m ganpo_llamafactory.cli train cfg.yaml``, which runs
LLaMA-Factory's own launcher and ``run_exp``) of the tiny example on CPU, on a real LLaMA-Factory
dataset (``dataset_info.json`` over the tiny preference pairs); each named run happens once per session."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from llamafactory_dataset import write_ranking_dataset
from trainer_run import TrainerRun

EXAMPLE = "examples/llamafactory/tiny_dpo_ganpo.yaml"
# Short, exact runs: one pair per step (so logged per-step numbers describe that pair), no warm-up,
# a checkpoint every 2 steps, a small discriminator, pairs in file order.
TEST_SETTINGS: dict[str, Any] = {
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "max_steps": 4,
    "save_steps": 2,
    "disable_shuffling": True,
    "ganpo": {"discriminator": {"d_model": 32, "num_heads": 4, "ffn_size": 64}},
}


class LFRun(TrainerRun):
    """A LLaMA-Factory CLI run; ``regularizer_state()`` without a step reads the final output folder."""

    def trainer_log(self) -> list[dict[str, Any]]:
        """LLaMA-Factory's own ``trainer_log.jsonl`` (what LLaMA Board reads)."""
        return [json.loads(line) for line in (self.out / "trainer_log.jsonl").read_text().splitlines()]

    def regularizer_state(self, step: int | None = None) -> dict[str, Any]:
        import torch

        folder = self.out if step is None else self.checkpoint(step)
        return torch.load(folder / "ganpo_regularizer.pt", weights_only=True)


@pytest.fixture(scope="session")
def lf_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llamafactory")


@pytest.fixture(scope="session")
def lf_dataset_dir(tiny_assets: Path, lf_workdir: Path) -> Path:
    """A LLaMA-Factory ``dataset_dir``: ``dataset_info.json`` naming the tiny pairs as a ranking dataset."""
    return write_ranking_dataset(lf_workdir / "data", "tiny_prefs", tiny_assets / "prefs.jsonl")


@pytest.fixture(scope="session")
def lf_cfg(
    tiny_assets: Path, lf_workdir: Path, lf_dataset_dir: Path, example_config: Callable[..., dict[str, Any]]
) -> Callable[..., dict[str, Any]]:
    """``lf_cfg(name, overrides, ganpo=True)``: the tiny example config for a run named ``name``,
    pointed at the session's tiny assets, with the test settings and ``overrides``."""

    def build(name: str, overrides: Mapping[str, Any] | None = None, ganpo: bool = True) -> dict[str, Any]:
        cfg = example_config(EXAMPLE, TEST_SETTINGS, overrides or {})
        cfg["model_name_or_path"] = str(tiny_assets / "model")
        cfg["dataset_dir"] = str(lf_dataset_dir)
        cfg["output_dir"] = str(lf_workdir / name / "out")
        if not ganpo:
            cfg.pop("ganpo")
        return cfg

    return build


@pytest.fixture(scope="session")
def lf_train(lf_workdir: Path, run_cli: Callable[..., Any]) -> Callable[..., LFRun]:
    """``lf_train(name, cfg, *overrides, plain=False)``: ``ganpo-llamafactory-cli train`` (``plain``:
    LLaMA-Factory's own ``llamafactory-cli train``) once per name on ``cfg`` written to YAML, with
    ``key=value`` overrides."""
    done: dict[str, LFRun] = {}

    def train(name: str, cfg: dict[str, Any], *overrides: str, plain: bool = False) -> LFRun:
        import yaml

        if name not in done:
            folder = lf_workdir / name
            folder.mkdir(exist_ok=True)
            (folder / "cfg.yaml").write_text(yaml.safe_dump(cfg))
            cli = "llamafactory-cli" if plain else "ganpo-llamafactory-cli"
            command = [str(Path(sys.executable).with_name(cli)), "train", str(folder / "cfg.yaml"), *overrides]
            result = run_cli(command, log=folder / "log.txt", cwd=folder, python=False)
            done[name] = LFRun(result.returncode, result.stdout, Path(cfg["output_dir"]), cfg)
        return done[name]

    return train
