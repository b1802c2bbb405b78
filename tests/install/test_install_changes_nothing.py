"""Installing the package, with the extra of the host this env holds, into an environment that
already has that host changes no installed package (pip's own dry-run report says what an
install would do, without doing it). Run in every host env: the oldest and the newest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXTRA = os.environ.get("GANPO_HOST_EXTRA")

pytestmark = pytest.mark.newest


@pytest.mark.skipif(EXTRA is None, reason="set GANPO_HOST_EXTRA to the host extra this env holds (tox does)")
def test_installing_with_the_host_extra_changes_nothing(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), f"{REPO}[{EXTRA}]"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    would_install = {
        item["metadata"]["name"]: item["metadata"]["version"] for item in json.loads(report.read_text())["install"]
    }
    assert set(would_install) == {"ganpo-plugins"}, f"installing .[{EXTRA}] would change: {would_install}"
