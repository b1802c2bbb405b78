"""TRL training arguments of the tiny in-process runs, shared by every TRL test (TRL imported on call):
CPU, one pair (or one prompt's completions) per device step unless overridden, log every step, no
saving, fixed seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BETA = 0.1  # TRL's default β, stated for the tests that compute with it

_RUN: dict[str, Any] = {
    "use_cpu": True,
    "max_steps": 2,
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": [],
    "learning_rate": 1e-3,
    "seed": 0,
}
_COMMON: dict[str, Any] = {**_RUN, "per_device_train_batch_size": 1, "beta": BETA}


def dpo_args(tmp_path: Path, **overrides: Any) -> Any:
    """``DPOConfig`` writing under ``tmp_path/out``."""
    from trl import DPOConfig

    settings = {**_COMMON, "output_dir": str(tmp_path / "out"), "per_device_eval_batch_size": 2, "max_length": 64}
    return DPOConfig(**{**settings, **overrides})


def simpo_args(tmp_path: Path, **overrides: Any) -> Any:
    """``CPOConfig`` of SimPO (γ 0.5, β 2, no CPO term) writing under ``tmp_path/out``."""
    from trl.experimental.cpo import CPOConfig

    settings = {**_COMMON, "output_dir": str(tmp_path / "out"), "max_length": 64, "loss_type": "simpo"}
    settings |= {"cpo_alpha": 0.0, "simpo_gamma": 0.5, "beta": 2.0, "max_steps": 3}
    return CPOConfig(**{**settings, **overrides})


def online_args(tmp_path: Path, **overrides: Any) -> Any:
    """``OnlineDPOConfig`` (two prompts per step, six new tokens) writing under ``tmp_path/out``."""
    from trl.experimental.online_dpo import OnlineDPOConfig

    settings = {**_COMMON, "output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 2}
    settings |= {"max_new_tokens": 6, "max_length": 48, "disable_tqdm": True}
    return OnlineDPOConfig(**{**settings, **overrides})


def rl_args(tmp_path: Path, config_class: type, generations: int, **overrides: Any) -> Any:
    """``GRPOConfig`` or ``RLOOConfig`` (one prompt's ``generations`` completions of at most 8 tokens per
    device step, the trainer's own β) writing under ``tmp_path/out``."""
    settings = {**_RUN, "output_dir": str(tmp_path / "out"), "per_device_train_batch_size": generations}
    settings |= {"num_generations": generations, "max_completion_length": 8, "disable_tqdm": True}
    return config_class(**{**settings, **overrides})
