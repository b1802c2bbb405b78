"""The README's main demo (``tox -e demo``): its exact commands, run in a scratch folder."""

from __future__ import annotations

import configparser
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("axolotl.cli", reason="needs Axolotl: tox -e axolotl-oldest")

REPO = Path(__file__).resolve().parents[2]


def demo_commands() -> list[list[str]]:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(REPO / "tox.ini")
    lines = [line.strip() for line in tox["testenv:demo"]["commands"].splitlines() if line.strip()]
    return [shlex.split(line) for line in lines]


def test_demo_commands_run_and_show_ganpo_metrics(tmp_path: Path, host_env: dict[str, str]) -> None:
    commands = demo_commands()
    assert len(commands) == 3 and commands[1][:3] == ["python", "-m", "axolotl.cli.train"]
    (tmp_path / "examples").symlink_to(REPO / "examples")  # the commands use repo-relative paths
    outputs = []
    for cmd in commands:
        assert cmd[0] == "python"
        result = subprocess.run(
            [sys.executable, *cmd[1:]], cwd=tmp_path, env=host_env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        outputs.append(result.stdout)
    table = outputs[-1]
    assert "ganpo/adv_loss" in table and "ganpo/d_pos/accuracy" in table
    assert table.count("ganpo_regularizer.pt: present") == 3
    assert (tmp_path / "outputs" / "tiny-dpo-ganpo" / "ganpo_regularizer.pt").exists()
