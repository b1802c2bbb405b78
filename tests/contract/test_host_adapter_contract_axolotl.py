"""The host-adapter contract (host_harness.py) on Axolotl's real CLI (tox -e axolotl-oldest): the plugin
attaches to the trainer Axolotl builds, which the TRL adapter claims."""

from __future__ import annotations

from pathlib import Path

import pytest
from contract.host_harness import AxolotlHarness, HostAdapterContract, HostHarness

pytestmark = [pytest.mark.axolotl, pytest.mark.slow]


class TestAxolotlCLI(HostAdapterContract):
    @pytest.fixture(scope="class")
    @classmethod
    def harness(cls, tiny_assets: Path, host_env: dict[str, str]) -> HostHarness:
        return AxolotlHarness(tiny_assets, host_env)
