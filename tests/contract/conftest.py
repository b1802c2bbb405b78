"""The example third-party host adapter (examples/third_party_host_adapter), installed for the
contract suite as a user would install it: a distribution on sys.path whose entry point
``minidpo`` of the group ``ganpo_plugins.hosts`` ``ganpo_plugins.attach`` finds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ganpo_plugins.plugins.registry import fresh_plugin_manager

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "third_party_host_adapter"


def install_example(tmp: Path) -> Path:
    """``pip install --no-deps --target`` of a copy of the example (the copy keeps build files out of
    the repository); returns the target folder."""
    source, target = tmp / "src", tmp / "site"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(source)], check=True
    )
    return target


@pytest.fixture(scope="session")
def example_host_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_example(tmp_path_factory.mktemp("example_host"))


@pytest.fixture(scope="module", autouse=True)
def example_host(example_host_site: Path) -> Iterator[Path]:
    """The example on sys.path for one module, with the host adapters loaded afresh (so ``minidpo``
    is among them); removed again afterwards, so no other test folder sees it."""
    sys.path.insert(0, str(example_host_site))
    fresh_plugin_manager()
    yield example_host_site
    sys.path.remove(str(example_host_site))
    for name in [m for m in sys.modules if m.split(".")[0] == "ganpo_example_host"]:
        del sys.modules[name]
    fresh_plugin_manager()
