"""Drives the core table of docs/bad-input.md: every row must fail with every listed fragment."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ganpo_plugins.config import GANPOConfigError, parse_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"


def core_rows() -> list[tuple[dict, list[str]]]:
    text = DOC.read_text()
    section = text.split("## Core configuration", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        match = re.fullmatch(r"\| `(\{.*\})` \| (.*) \|", line.strip())
        if match:
            rows.append((json.loads(match.group(1)), re.findall(r"`([^`]*)`", match.group(2))))
    return rows


ROWS = core_rows()


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
