"""Reads the executable tables of docs/bad-input.md (the docs are the test data)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"


def table(section: str) -> list[tuple[str, list[str]]]:
    """The rows of the table under ``## <section>...``: the first cell's code span, and the code
    spans of the second cell."""
    text = DOC.read_text()
    body = text.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in body.splitlines():
        match = re.fullmatch(r"\| `(.+?)` \| (.*) \|", line.strip())
        if match:
            rows.append((match.group(1), re.findall(r"`([^`]+)`", match.group(2))))
    if not rows:
        raise AssertionError(f"no table rows under '## {section}' in {DOC}")
    return rows
