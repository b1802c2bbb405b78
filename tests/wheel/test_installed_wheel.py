"""The package as users get it: the wheel built from the sdist (``python -m build``), installed (not
editable) into the TRL env, run from outside the checkout (tests/wheel/check_built_wheel.py, the last
step of ``tox -e trl-oldest``). Every module of the
wheel imports, the entry points are registered, and the TRL example trains with GANPO on the
tiny model: a wheel that misses a subpackage or an entry point fails here, not at a user's."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pkgutil
import subprocess
import sys
import sysconfig
from importlib.metadata import distribution, entry_points
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]  # the checkout: the example script and tiny assets come from it
PACKAGES = ("ganpo_plugins", "ganpo_trl", "ganpo_axolotl", "ganpo_openrlhf", "ganpo_llamafactory")
# Modules that import a host this env does not hold (Axolotl, OpenRLHF/DeepSpeed) or matplotlib.
NEEDS_ANOTHER_HOST = (
    "ganpo_axolotl.",
    "ganpo_openrlhf.dpo",
    "ganpo_openrlhf.rm",
    "ganpo_plugins.plot",
    "ganpo_plugins.tools.plot",
)

pytestmark = pytest.mark.skipif(
    os.environ.get("GANPO_WHEEL_INSTALLED") != "1", reason="checks an installed wheel: tests/wheel/check_built_wheel.py"
)


def test_the_package_comes_from_the_wheel_not_the_checkout() -> None:
    source = json.loads(distribution("ganpo-plugins").read_text("direct_url.json") or "{}")
    assert source.get("url", "").endswith(".whl") and "dir_info" not in source, source  # not editable
    site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
    for name in PACKAGES:
        where = Path(importlib.util.find_spec(name).origin).resolve()
        assert site_packages in where.parents, f"{name} would be imported from {where}, not the installed wheel"


def test_every_module_of_the_wheel_imports() -> None:
    imported = []
    for name in PACKAGES:
        locations = importlib.util.find_spec(name).submodule_search_locations
        for module in pkgutil.walk_packages(locations, f"{name}."):
            if module.name.startswith(NEEDS_ANOTHER_HOST) or module.name.endswith(".__main__"):
                continue  # __main__ modules run their command when imported
            importlib.import_module(module.name)
            imported.append(module.name)
    for layer in ("formulas", "regularizers", "plugins", "adapter_kit", "tools", "apo"):
        assert any(m.startswith(f"ganpo_plugins.{layer}.") for m in imported), f"ganpo_plugins.{layer} missing"


def test_the_entry_points_are_registered() -> None:
    hosts = {ep.name: ep.value for ep in entry_points(group="ganpo_plugins.hosts")}
    assert hosts == {
        "trl": "ganpo_trl.entry_point",
        "openrlhf": "ganpo_openrlhf.entry_point",
        "llamafactory": "ganpo_llamafactory.entry_point",
    }
    scripts = {ep.name for ep in entry_points(group="console_scripts") if ep.value.startswith("ganpo_")}
    assert scripts == {"ganpo-apo", "ganpo-openrlhf-train-dpo", "ganpo-openrlhf-train-rm", "ganpo-llamafactory-cli"}


def test_the_trl_example_trains_with_the_installed_wheel(tmp_path: Path, tiny_assets: Path) -> None:
    out = tmp_path / "out"
    args = [
        sys.executable, str(REPO / "examples/trl/dpo_ganpo.py"),
        "--model_name_or_path", str(tiny_assets / "model"), "--dataset", str(tiny_assets / "prefs.jsonl"),
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1",
        "--save_steps", "2", "--use_cpu", "--report_to", "none", "--max_length", "64",
        "--ganpo", json.dumps({"discriminator": {"d_model": 32, "num_heads": 4, "ffn_size": 64}}),
    ]  # fmt: skip
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    history = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert sum("ganpo/adv_loss" in entry for entry in history) == 2
    assert torch.load(out / "checkpoint-2" / "ganpo_regularizer.pt", weights_only=True)["state"]["disc_steps"] == 2
    doctor = subprocess.run(
        [sys.executable, "-m", "ganpo_plugins", "doctor"], cwd=tmp_path, capture_output=True, text=True
    )
    assert doctor.returncode == 0 and "| trl | 1.9.0 |" in doctor.stdout, doctor.stdout + doctor.stderr
