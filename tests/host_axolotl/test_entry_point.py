"""Axolotl >= 0.21 loads installed plugins by entry point in every run (group
``axolotl.plugins``): the ``ganpo:`` block alone switches GANPO on, a run without it stays
plain, and a misspelt block is refused. Axolotl 0.19 has no such loading: there the
``plugins:`` line is required (``docs/bad-input.md``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("axolotl.cli", reason="needs Axolotl: tox -e axolotl-newest")

pytestmark = [pytest.mark.axolotl, pytest.mark.slow, pytest.mark.axolotl_entry_points]


def test_the_block_alone_switches_ganpo_on(axolotl_cfg: Callable[..., Any], axolotl_train: Callable[..., Any]) -> None:
    cfg = axolotl_cfg("block_only", {"max_steps": 2, "save_steps": 2})
    cfg.pop("plugins")
    run = axolotl_train("block_only", cfg)
    run.assert_ok()
    assert "ganpo regularizer ON" in run.log
    assert all("ganpo/adv_loss" in e for e in run.history())


def test_a_run_without_the_block_is_plain(axolotl_cfg: Callable[..., Any], axolotl_train: Callable[..., Any]) -> None:
    run = axolotl_train("no_block", axolotl_cfg("no_block", {"max_steps": 2, "save_steps": 2}, plugin=False))
    run.assert_ok()
    assert "ganpo_axolotl.plugin.GANPOPlugin" in run.log  # loaded by its entry point …
    assert "regularizer ON" not in run.log  # … and inert
    assert not any(k.startswith("ganpo/") for e in run.history() for k in e)
    assert not (run.out / "ganpo_regularizer.pt").exists()


def test_a_misspelt_block_without_the_plugins_line_is_refused(
    axolotl_cfg: Callable[..., Any], axolotl_train: Callable[..., Any]
) -> None:
    cfg = axolotl_cfg("typo_entry_point")
    cfg.pop("plugins")
    cfg["gnapo"] = cfg.pop("ganpo")
    run = axolotl_train("typo_entry_point", cfg)
    assert run.returncode != 0
    assert "unknown top-level key 'gnapo': did you mean 'ganpo'?" in run.log
    assert "Loading weights" not in run.log
