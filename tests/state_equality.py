"""Bit-for-bit comparison of nested states (regularizer state dicts, model weights)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def assert_states_equal(a: Any, b: Any, where: str = "state") -> None:
    """``a`` and ``b`` are equal bit for bit: same keys, lengths, dtypes and values, recursively."""
    if isinstance(a, Mapping):
        assert isinstance(b, Mapping) and set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_states_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_states_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, f"{where}: {a.dtype} != {getattr(b, 'dtype', b)}"
        assert torch.equal(a, b), f"{where}: tensors differ (max |Δ| {(a.float() - b.float()).abs().max()})"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
