"""The example third-party package installs, and a config resolves its regularizer by name."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHECK = textwrap.dedent(
    """
    import sys
    import torch
    from ganpo_plugins import LatentBatch, RegularizerContext, StepInfo, build_regularizer, parse_config
    from ganpo_plugins.plugins.registry import known_names, not_loaded_plugins

    assert "latent_l2" in not_loaded_plugins()                   # listed from its entry point ...
    assert "latent_l2" not in known_names("regularizer")         # ... its kind unknown until imported
    parse_config({"regularizer": "ganpo"})
    assert "ganpo_example_plugin" not in sys.modules               # ... and not imported until named
    cfg = parse_config({"regularizer": "latent_l2", "weight": 0.5})
    assert "ganpo_example_plugin" in sys.modules
    assert "latent_l2" in known_names("regularizer") and "latent_l2" not in known_names("discriminator")
    reg = build_regularizer(cfg, RegularizerContext(hidden_size=4, policy_lr=1e-3, total_steps=1))
    policy = torch.ones(2, 3, 4, requires_grad=True)
    ones = torch.ones(2, 3, dtype=torch.bool)
    batch = LatentBatch.from_concatenated(policy, torch.zeros(2, 3, 4), ones, ones)
    reg.update(batch, StepInfo())
    out = reg.policy_term(batch)
    # pooled difference is the all-ones vector of size 4 for chosen and rejected: 0.5 * (4 + 4)
    assert abs(out.loss.item() - 4.0) < 1e-6, out.loss.item()
    out.loss.backward()
    assert policy.grad.abs().sum() > 0
    try:
        parse_config({"regularizer": "latent_l3"})
    except ValueError as exc:
        assert "Did you mean 'latent_l2'" in str(exc), exc
    else:
        raise AssertionError("unknown name accepted")
    print("third-party ok")
    """
)


@pytest.mark.slow
def test_third_party_regularizer_resolves_by_name(tmp_path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(ROOT / "examples" / "third_party_regularizer")],
        check=True,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "third-party ok" in result.stdout
