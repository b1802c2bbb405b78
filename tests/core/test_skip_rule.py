"""The skip rule of tests/conftest.py, run on its own in a pytest subprocess (``-p conftest``): each
env fails on a test that did not run as a test of that env, whatever plugin flags are given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

OUTCOMES = {
    "test_passes.py": "def test_passes():\n    pass\n",
    "test_skips.py": "import pytest\n\ndef test_skips():\n    pytest.skip('host missing')\n",
    "test_skipped_module.py": "import pytest\n\npytest.importorskip('no_such_host')\n\ndef test_never():\n    pass\n",
    "test_xfails.py": "import pytest\n\n@pytest.mark.xfail(reason='known')\ndef test_xfails():\n    assert False\n",
    "test_xpasses.py": "import pytest\n\n@pytest.mark.xfail(reason='known')\ndef test_xpasses():\n    pass\n",
    "test_marked.py": "import pytest\n\n@pytest.mark.slow\ndef test_marked():\n    pass\n",
}


def run_pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    for name, text in OUTCOMES.items():
        (folder / name).write_text(text)
    env = {**os.environ, "PYTHONPATH": str(TESTS), "GANPO_TOX_ENV": "skip-rule-test"}
    env.pop("GANPO_FORBID_SKIPS", None)  # GANPO_TOX_ENV alone switches the rule on
    cmd = [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-W", "ignore", *args]
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_skips_xfails_and_xpasses_fail_the_run_without_a_terminal_reporter(tmp_path: Path) -> None:
    files = ["test_passes.py", "test_skips.py", "test_skipped_module.py", "test_xfails.py", "test_xpasses.py"]
    result = run_pytest(tmp_path, "-p", "no:terminal", *files)
    assert result.returncode == 1, result.stdout + result.stderr
    for line in (
        "FORBIDDEN skipped test_skips.py::test_skips",
        "FORBIDDEN skipped (at collection) test_skipped_module.py",
        "FORBIDDEN xfailed test_xfails.py::test_xfails: known",
        "FORBIDDEN xpassed test_xpasses.py::test_xpasses: known",
        "EMPTY TEST SET test_skipped_module.py",
    ):
        assert line in result.stdout, result.stdout
    assert "test_passes.py" not in result.stdout


def test_a_test_path_a_marker_selection_empties_fails_the_run(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, "-m", "not slow", "test_passes.py", "test_marked.py")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "EMPTY TEST SET test_marked.py: no test of it passed" in result.stdout
    assert "EMPTY TEST SET test_passes.py" not in result.stdout


def test_a_run_where_every_named_path_passes_is_green(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, "-m", "slow", "test_marked.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FORBIDDEN" not in result.stdout and "EMPTY" not in result.stdout
