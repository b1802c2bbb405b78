"""Two gloo processes with different data end with bit-identical discriminators and μ."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ganpo_plugins import GANPORegularizer, LatentBatch, RegularizerContext, StepInfo, parse_config

H = 8
CONFIG = {"discriminator": {"d_model": 16, "num_heads": 2, "ffn_size": 32, "num_layers": 1}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(seed: int) -> LatentBatch:
    g = torch.Generator().manual_seed(seed)
    b, t = 3, 6
    policy = torch.randn(2 * b, t, H, generator=g)
    ref = torch.randn(2 * b, t, H, generator=g)
    response = torch.zeros(2 * b, t, dtype=torch.bool)
    response[:, int(torch.randint(1, 4, (1,), generator=g)) :] = True
    return LatentBatch.from_concatenated(policy, ref, torch.ones(2 * b, t), response)


def _worker(rank: int, port: int, out: str, synced: bool, drift: bool = False) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    groups = [dist.new_group([0]), dist.new_group([1])]  # every rank must create every group
    group = None if synced else groups[rank]  # None → the default (world) group
    ctx = RegularizerContext(hidden_size=H, policy_lr=1e-3, total_steps=8, seed=0, process_group=group)
    reg = GANPORegularizer(parse_config(CONFIG), ctx)
    for step in range(6):
        # different data on every rank; one rank meets a poisoned batch: both must stay in lockstep
        batch = _batch(1000 * rank + step)
        if step == 3 and rank == 1:
            batch.policy_chosen[0, -1] = float("nan")
        if drift and step == 4 and rank == 1:  # one rank's weights drift by one float32 ulp
            weight = next(reg.discriminators.parameters())
            with torch.no_grad():
                weight[0] = torch.nextafter(weight[0], torch.full_like(weight[0], float("inf")))
        reg.update(batch, StepInfo(is_boundary=step % 2 == 1, accumulation_steps=2))
    torch.save(reg.state_dict(), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _run(tmp_path, synced: bool, drift: bool = False) -> tuple[dict, dict]:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), synced, drift), nprocs=2, join=True)
    return tuple(torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))


@pytest.mark.slow
def test_two_processes_end_bit_identical(tmp_path) -> None:
    a, b = _run(tmp_path, synced=True)
    assert a["disc_steps"] == b["disc_steps"] == 3
    assert torch.equal(a["mu"], b["mu"])
    for key, value in a["discriminators"].items():
        assert torch.equal(value, b["discriminators"][key]), key
    assert a["skipped_updates"] == 0 and b["skipped_updates"] == 1
    assert a["rank_resyncs"] == b["rank_resyncs"]


@pytest.mark.slow
def test_a_rank_that_drifts_is_resynced(tmp_path) -> None:
    """One rank's weights moved by one ulp mid-run: detected at the next optimiser step, the
    first rank's state is broadcast, and both end bit-identical."""
    a, b = _run(tmp_path, synced=True, drift=True)
    assert a["rank_resyncs"] == b["rank_resyncs"] == 1
    for key, value in a["discriminators"].items():
        assert torch.equal(value, b["discriminators"][key]), key
    for pid, state in a["optimizers"]["pos"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizers"]["pos"]["state"][pid][name]))


@pytest.mark.slow
def test_without_the_reduction_ranks_diverge(tmp_path) -> None:
    """The control: the same run with each rank reducing only over itself ends different."""
    a, b = _run(tmp_path, synced=False)
    assert not torch.equal(a["mu"], b["mu"])
    assert any(not torch.equal(v, b["discriminators"][k]) for k, v in a["discriminators"].items())
