"""The module paths of 0.1 still import, each with a DeprecationWarning naming where it went
(ganpo_plugins/_moved.py; the map is in CHANGELOG.md)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ganpo_plugins._moved import MOVED

# One name of each old module as a 0.1 user imported it, with the module that holds it now.
OLD_NAMES = {
    "functional": ("gpo_loss", "formulas.functional"),
    "preference": ("PairLogps", "formulas.preference"),
    "discriminators": ("MLPDiscriminator", "formulas.discriminators"),
    "logprobs": ("completion_logps", "formulas.logprobs"),
    "protocol": ("LatentRegularizer", "regularizers.protocol"),
    "distributed": ("mean_over_ranks", "regularizers.distributed"),
    "learned": ("LearnedRegularizer", "regularizers.learned"),
    "ganpo": ("GANPORegularizer", "regularizers.ganpo"),
    "ganpo_config": ("GANPOConfig", "regularizers.ganpo_config"),
    "mmd": ("MMDRegularizer", "regularizers.mmd"),
    "hookspecs": ("hookimpl", "plugins.hookspecs"),
    "registry": ("register_plugin", "plugins.registry"),
    "builtin": ("ganpo_regularizers", "plugins.builtin"),
    "taps": ("HiddenStateTap", "adapter_kit.taps"),
    "runner": ("state_path", "adapter_kit.checkpoint"),
    "attachment": ("Attachment", "adapter_kit.attachment"),
    "hf_trainer": ("SaveOnInterrupt", "adapter_kit.hf_trainer"),
    "host_rules": ("HostFacts", "adapter_kit.rules"),
    "hosts": ("attach", "plugins.dispatch"),
    "cli": ("run_host_cli", "adapter_kit.launch"),
    "flags": ("split_flags", "adapter_kit.flags"),
    "report": ("announce_on", "adapter_kit.announce"),
}


def test_every_moved_module_is_checked() -> None:
    assert set(OLD_NAMES) == set(MOVED)


def test_each_old_path_imports_the_same_object_and_warns() -> None:
    """In a fresh process (the old paths are resolved once per process): every old module, one name each."""
    check = (
        "import importlib, importlib.util, sys, warnings\n"
        f"old_names = {OLD_NAMES!r}\n"
        "failures = []\n"
        "for old, (name, new) in old_names.items():\n"
        "    if old == 'hf_trainer' and importlib.util.find_spec('transformers') is None:\n"
        "        continue  # imports transformers: checked in the host envs\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        warnings.simplefilter('always')\n"
        "        value = getattr(importlib.import_module(f'ganpo_plugins.{old}'), name)\n"
        "    if value is not getattr(importlib.import_module(f'ganpo_plugins.{new}'), name):\n"
        "        failures.append(f'{old}.{name} is not {new}.{name}')\n"
        "    messages = [str(w.message) for w in caught if w.category is DeprecationWarning]\n"
        "    if not any(f'ganpo_plugins.{old} moved to' in m and f'ganpo_plugins.{new}' in m for m in messages):\n"
        "        failures.append(f'{old}: no DeprecationWarning naming {new}: {messages}')\n"
        "assert not failures, failures\n"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_split_module_finds_each_name_where_it_went() -> None:
    check = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "import ganpo_plugins.runner as old_runner, ganpo_plugins.hosts as old_hosts\n"
        "from ganpo_plugins.adapter_kit import runner, checkpoint, versions\n"
        "from ganpo_plugins.plugins import build\n"
        "from ganpo_plugins.tools import doctor\n"
        "assert old_runner.RegularizerRunner is runner.RegularizerRunner\n"
        "assert old_runner.STATE_FILE == checkpoint.STATE_FILE\n"
        "assert old_runner.build_regularizer is build.build_regularizer\n"
        "assert old_hosts.require_host is versions.require_host and old_hosts.doctor_report is doctor.doctor_report\n"
        "try:\n    old_runner.no_such_name\nexcept AttributeError as exc:\n    assert 'moved to' in str(exc)\n"
        "else:\n    raise AssertionError('no AttributeError')\n"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_config_forwards_the_parser_with_a_warning() -> None:
    from ganpo_plugins.plugins.parse import parse_config

    with pytest.warns(DeprecationWarning, match=r"ganpo_plugins\.config\.parse_config moved to ganpo_plugins\.plugins"):
        from ganpo_plugins.config import parse_config as old
    assert old is parse_config
