"""OpenRLHF host tests (``tox -e openrlhf-oldest`` / ``openrlhf-newest``); each module skips itself where
OpenRLHF is not installed."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith("tests/host_openrlhf/") or "test_openrlhf_" in item.nodeid:
            item.add_marker(pytest.mark.openrlhf)
            item.add_marker(pytest.mark.slow)
