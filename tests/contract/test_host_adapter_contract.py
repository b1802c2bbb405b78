"""The host-adapter contract (host_harness.py) on the example third-party host, MiniDPOLoop (core env)."""

from __future__ import annotations

from pathlib import Path

import pytest
from contract.host_harness import HostAdapterContract, HostHarness, MiniDPOHarness


class TestMiniDPOLoop(HostAdapterContract):
    @pytest.fixture(scope="class")
    @classmethod
    def harness(cls, example_host: Path) -> HostHarness:
        return MiniDPOHarness()
