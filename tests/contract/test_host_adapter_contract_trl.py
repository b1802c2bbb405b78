"""The host-adapter contract (host_harness.py) on TRL's DPOTrainer (the TRL envs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from contract.host_harness import HostAdapterContract, HostHarness, TRLHarness


class TestTRLDPOTrainer(HostAdapterContract):
    @pytest.fixture(scope="class")
    @classmethod
    def harness(cls, tiny_assets: Path) -> HostHarness:
        return TRLHarness(tiny_assets)
