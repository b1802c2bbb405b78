"""The host-adapter contract (host_harness.py) on OpenRLHF's real DPO CLI through ``ganpo_openrlhf.train_dpo``
(tox -e openrlhf-oldest): one CPU process, ZeRO-2."""

from __future__ import annotations

from pathlib import Path

import pytest
from contract.host_harness import HostAdapterContract, HostHarness, OpenRLHFHarness

pytestmark = [pytest.mark.openrlhf, pytest.mark.slow]


class TestOpenRLHFDPOCLI(HostAdapterContract):
    @pytest.fixture(scope="class")
    @classmethod
    def harness(cls, tiny_assets: Path, host_env: dict[str, str]) -> HostHarness:
        return OpenRLHFHarness(tiny_assets, host_env)
