"""The regularizer state files of a multi-rank run with the default settings
(ganpo_plugins.adapter_kit.checkpoint): rank 0 writes the whole state, every other rank the part
its regularizer names rank-local (its random stream), and a resumed rank gets its own part back.
Ranks are played in one process by setting what ``rank()`` answers; the 2-process run is in
tests/reliability/test_trl_two_process.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from latents import make_batch, make_regularizer
from state_equality import assert_states_equal

from ganpo_plugins import StepInfo
from ganpo_plugins.adapter_kit import checkpoint


def _trained(seed: int, updates: int = 1):
    regularizer = make_regularizer()
    for _ in range(updates):
        regularizer.update(make_batch(seed, t=7 + 4 * seed), StepInfo(is_boundary=True, accumulation_steps=1))
    return regularizer


def _as_rank(monkeypatch: pytest.MonkeyPatch, r: int) -> None:
    monkeypatch.setattr(checkpoint, "rank", lambda: r)


def test_each_rank_resumes_its_own_random_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Rank 1 drew more dropout masks (two updates): its random stream has moved on from rank 0's. (Batches of
    # other lengths alone do not separate the streams on every torch: on 2.6 they end in the same state.)
    ranks = [_trained(seed, updates=1 + seed) for seed in (0, 1)]
    assert not torch.equal(ranks[0].state_dict()["cpu_rng"], ranks[1].state_dict()["cpu_rng"])
    for r, regularizer in enumerate(ranks):
        _as_rank(monkeypatch, r)
        checkpoint.save_state(regularizer, regularizer.config, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ganpo_regularizer.pt", "ganpo_regularizer.rank1.local.pt"]
    local = torch.load(tmp_path / "ganpo_regularizer.rank1.local.pt", weights_only=True)["local"]
    assert set(local) == {"cpu_rng", "cuda_rng"}  # the random stream only, not a second copy of the weights

    for r, regularizer in enumerate(ranks):
        _as_rank(monkeypatch, r)
        fresh = make_regularizer()
        assert checkpoint.load_state(fresh, fresh.config, tmp_path) == tmp_path / "ganpo_regularizer.pt"
        assert torch.equal(fresh.state_dict()["cpu_rng"], regularizer.state_dict()["cpu_rng"])
        assert_states_equal(fresh.state_dict()["discriminators"], ranks[0].state_dict()["discriminators"])


def test_a_rank_without_its_file_says_it_continues_rank_0s_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = _trained(0)
    _as_rank(monkeypatch, 0)
    checkpoint.save_state(saved, saved.config, tmp_path)
    _as_rank(monkeypatch, 1)
    fresh = make_regularizer()
    with pytest.warns(RuntimeWarning, match=r"holds no ganpo_regularizer\.rank1\.local\.pt.*rank 1 continues rank 0's"):
        checkpoint.load_state(fresh, fresh.config, tmp_path)
    assert torch.equal(fresh.state_dict()["cpu_rng"], saved.state_dict()["cpu_rng"])


def test_save_every_rank_writes_whole_states_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    regularizer = make_regularizer(save_every_rank=True)
    for r in (0, 1):
        _as_rank(monkeypatch, r)
        checkpoint.save_state(regularizer, regularizer.config, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ganpo_regularizer.pt", "ganpo_regularizer.rank1.pt"]
