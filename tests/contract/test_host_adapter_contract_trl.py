"""The host-adapter contract (host_harness.py) on TRL's DPOTrainer and CPOTrainer (the TRL envs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from contract.host_harness import HostAdapterContract, HostHarness, TRLCPOHarness, TRLHarness


class TestTRLDPOTrainer(HostAdapterContract):
    @pytest.fixture(scope="class")
    @classmethod
    def harness(cls, tiny_assets: Path) -> HostHarness:
        return TRLHarness(tiny_assets)


class TestTRLCPOTrainer(HostAdapterContract):
    # SimPO computes no reference log-probabilities: a reference-based GPO kind is refused there
    # (tests/core/test_host_rules.py), so the base-loss case does not apply.
    test_gpo_kind_is_the_base_loss = None

    @pytest.fixture(scope="class")
    @classmethod
    def harness(cls, tiny_assets: Path) -> HostHarness:
        return TRLCPOHarness(tiny_assets)
