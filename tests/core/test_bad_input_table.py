"""Drives the core table of docs/bad-input.md: every row must fail with every listed fragment."""

from __future__ import annotations

import json

import pytest
from bad_input_table import table

from ganpo_plugins.config import GANPOConfigError
from ganpo_plugins.plugins.parse import parse_config

ROWS = [(json.loads(config), fragments) for config, fragments in table("Core configuration")]


def test_the_table_is_not_empty() -> None:
    assert len(ROWS) >= 25


@pytest.mark.parametrize("data,fragments", ROWS, ids=[json.dumps(r[0]) for r in ROWS])
def test_each_row_fails_with_its_message(data: dict, fragments: list[str]) -> None:
    with pytest.raises(GANPOConfigError) as info:
        parse_config(data)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from:\n{message}"
    assert message.count("\n  ") == 1, f"expected exactly one problem:\n{message}"
