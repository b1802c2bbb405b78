"""Real Axolotl CLI runs (``python -m axolotl.cli.train cfg.yml``) of the tiny example, shared
by the tests of this folder: each named run happens once per session."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from trainer_run import TrainerRun

EXAMPLE = "examples/axolotl/tiny_dpo_ganpo.yml"
# Short, exact runs: one pair per step (so logged per-step numbers describe that pair), no
# warm-up (the policy moves from step 1), a checkpoint every 2 steps, a small discriminator.
TEST_SETTINGS: dict[str, Any] = {
    "micro_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "max_steps": 4,
    "save_steps": 2,
    "learning_rate": 1.0e-3,
    "warmup_ratio": None,
    "warmup_steps": 0,
    "ganpo": {"discriminator": {"d_model": 32, "num_heads": 4, "ffn_size": 64}},
}


@pytest.fixture(scope="session")
def axolotl_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("axolotl")


@pytest.fixture(scope="session")
def axolotl_cfg(
    tiny_assets: Path, axolotl_workdir: Path, example_config: Callable[..., dict[str, Any]]
) -> Callable[..., dict[str, Any]]:
    """``axolotl_cfg(name, overrides, plugin=True)``: the tiny example config for a run named
    ``name``, pointed at the session's tiny assets, with the test settings and ``overrides``."""

    def build(name: str, overrides: Mapping[str, Any] | None = None, plugin: bool = True) -> dict[str, Any]:
        cfg = example_config(EXAMPLE, TEST_SETTINGS, overrides or {})
        cfg["base_model"] = str(tiny_assets / "model")
        cfg["datasets"][0]["path"] = str(tiny_assets / "prefs.jsonl")
        cfg["dataset_prepared_path"] = str(axolotl_workdir / "prepared")
        cfg["output_dir"] = str(axolotl_workdir / name / "out")
        if not plugin:
            cfg.pop("plugins")
            cfg.pop("ganpo")
        return cfg

    return build


@pytest.fixture(scope="session")
def axolotl_train(axolotl_workdir: Path, run_cli: Callable[..., Any]) -> Callable[[str, dict[str, Any]], TrainerRun]:
    """``axolotl_train(name, cfg)``: run ``python -m axolotl.cli.train`` once per name."""
    done: dict[str, TrainerRun] = {}

    def train(name: str, cfg: dict[str, Any]) -> TrainerRun:
        import yaml  # comes with Axolotl (the test modules skip without it)

        if name not in done:
            folder = axolotl_workdir / name
            folder.mkdir(exist_ok=True)
            (folder / "cfg.yml").write_text(yaml.safe_dump(cfg))
            result = run_cli(["-m", "axolotl.cli.train", str(folder / "cfg.yml")], log=folder / "log.txt", cwd=folder)
            done[name] = TrainerRun(result.returncode, result.stdout, Path(cfg["output_dir"]), cfg)
        return done[name]

    return train
