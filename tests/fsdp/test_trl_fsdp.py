"""GANPO under FSDP2 and FSDP1 through the real TRL/accelerate path, two processes on CPU (gloo).

One ``torchrun --nproc_per_node 2`` launch trains every configuration in turn
(``trl_fsdp_worker.py``): DDP, then FSDP2, then FSDP1, each × {full fine-tune, LoRA} ×
{the trainer's reference forward, the adapter's own reference forward with
``precompute_ref_log_probs`` (frozen copy / adapter-disabled policy), a sharded ``ref_model``
(TRL's ``prepare_fsdp``) given to the adapter}, and two FSDP2 runs saved at step 2; a second
launch resumes those. ``cpu_fsdp_shim/`` (test-only, on the workers' PYTHONPATH) lets
accelerate take its FSDP path on CPU; it says why. Checked: models really sharded, ``ganpo/*``
logged every step, every rank's regularizer (discriminators, μ, optimiser state) bit-identical,
the first steps' losses equal to DDP's, the regularizer state saved once and restored on every
rank, and, with per-rank files, a resumed run identical to an uninterrupted one.

Which save path is whose: the SHARDED_STATE_DICT checkpoints are accelerate's own code; the FSDP2
FULL_STATE_DICT model save is the shim's gather (the torch call accelerate makes, without its
``cpu_offload``, whose tensors are invalid by the time safetensors writes them on CPU), so
accelerate's own FSDP2 ``get_state_dict`` (with its offload) is not tested. HSDP runs for real on 4
processes (a 2 × 2 mesh); the tensor-parallel group choice is a unit test of the choice alone.

Not covered here, with the reason: FSDP1 with FULL_STATE_DICT (the host's own model and
optimiser checkpoint segfaults inside torch on CPU; the regularizer file does not depend on
the state-dict type); ``DPOTrainer(ref_model=..., precompute_ref_log_probs=True)`` under FSDP2
(TRL's ``hash_module`` calls ``.numpy()`` on the sharded weights and fails before any GANPO
code runs: give the sharded reference to ``attach_regularizer(..., ref_model=)`` instead, as
here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from state_equality import assert_states_equal

pytest.importorskip("trl", reason="needs TRL: tox -e trl-oldest / trl-newest")
pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
SHARED = ("discriminators", "optimizers", "mu", "mu_initialized", "disc_steps", "skipped_updates")
REFERENCES = ("trainer", "precompute", "sharded")
# FSDP2 covers both state-dict types on both paths; FSDP1 saves sharded (see the docstring).
FSDP2_STATE_DICT = {"trainer": "FULL_STATE_DICT", "precompute": "SHARDED_STATE_DICT", "sharded": "FULL_STATE_DICT"}


def _name(fsdp: int, lora: bool, reference: str) -> str:
    return f"{'ddp' if not fsdp else f'fsdp{fsdp}'}-{'lora' if lora else 'full'}-{reference}"


def _runs() -> list[dict[str, Any]]:
    runs = []
    for fsdp in (0, 2, 1):  # DDP first: a state that became FSDP stays FSDP for the process
        for lora in (False, True):
            for reference in REFERENCES:
                run = {"name": _name(fsdp, lora, reference), "fsdp": fsdp, "lora": lora, "reference": reference}
                run["state_dict_type"] = FSDP2_STATE_DICT[reference] if fsdp == 2 else "SHARDED_STATE_DICT"
                runs.append({**run, "steps": 2})
    return [*runs, *_resume_runs(None)]


def _resume_runs(out: Path | None) -> list[dict[str, Any]]:
    """FSDP2 runs saved at step 2 (``out`` None), or the runs resuming from them: ``once`` saves
    rank 0's file only (the default), ``every-rank`` one per rank (``save_every_rank``)."""
    common = {"fsdp": 2, "lora": False, "reference": "trainer", "state_dict_type": "SHARDED_STATE_DICT"}
    runs = []
    for name, every_rank in (("once", False), ("every-rank", True)):
        run = {**common, "name": f"{name}-base", "steps": 4, "save_steps": 2, "save_every_rank": every_rank}
        if out is not None:
            run = {**run, "name": f"{name}-resumed", "resume": str(out / f"{name}-base" / "checkpoint-2")}
        runs.append(run)
    return runs


SHARDED_RUNS = [run for run in _runs() if run["fsdp"] and "base" not in run["name"]]


def _launch(
    out: Path, runs: list[dict[str, Any]], processes: int, assets: Path, host_env: dict[str, str], log: str
) -> None:
    """One ``torchrun`` launch of ``processes`` workers training ``runs`` in turn."""
    env = {
        **host_env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE / "cpu_fsdp_shim"), host_env.get("PYTHONPATH")])),
    }
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    cmd = [*torchrun, str(HERE / "trl_fsdp_worker.py"), str(assets), str(out), json.dumps(runs)]
    result = subprocess.run(
        cmd, env=env, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=400
    )
    (out / log).write_text(result.stdout)
    assert result.returncode == 0, result.stdout[-6000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_assets: Path, host_env: dict[str, str]) -> Path:
    """Every run of :func:`_runs`, then the resumed ones, in two torchrun launches; their output."""
    out = tmp_path_factory.mktemp("fsdp")
    for i, runs in enumerate((_runs(), _resume_runs(out))):
        _launch(out, runs, 2, tiny_assets, host_env, f"log{i}.txt")
    return out


def _results(out: Path, name: str, ranks: int = 2) -> list[dict[str, Any]]:
    return [json.loads((out / name / f"result.rank{r}.json").read_text()) for r in range(ranks)]


def _train_logs(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry for entry in result["log_history"] if "loss" in entry]


def _state(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)["state"]


@pytest.mark.parametrize("run", SHARDED_RUNS, ids=[run["name"] for run in SHARDED_RUNS])
def test_sharded_training_matches_ddp_and_keeps_ranks_identical(trained: Path, run: dict[str, Any]) -> None:
    results = _results(trained, run["name"])
    kind = f"fsdp{run['fsdp']}"
    for result in results:
        assert result["policy"] == kind  # the shim made accelerate shard, not fall back to DDP
        assert result["group_size"] == 2  # plain FSDP: the batch differs on every rank
        if run["reference"] == "trainer" and not run["lora"]:
            assert result["ref_model"] == kind  # TRL's own reference, sharded by TRL
        if run["reference"] == "sharded":
            assert result["own_reference"] == kind  # the adapter's forward ran through the sharded root
    logs = _train_logs(results[0])
    assert len(logs) == 2 and all("ganpo/adv_loss" in entry and "ganpo/d_pos/mu_real" in entry for entry in logs)
    ddp = _train_logs(_results(trained, _name(0, run["lora"], run["reference"]))[0])
    # Sharded parameters are gathered into other buffers, so matmuls differ in the last bits
    # (~1e-5 here); μ is left out: AdamW's first steps turn such differences into lr-sized ones.
    for key in ("loss", "ganpo/adv_loss", "logps/chosen"):
        got, want = [entry[key] for entry in logs], [entry[key] for entry in ddp]
        assert got == pytest.approx(want, rel=1e-3), key
    checkpoint = trained / run["name"] / "checkpoint-2"
    states = [_state(checkpoint / name) for name in ("ganpo_regularizer.pt", "ganpo_regularizer.rank1.pt")]
    assert [s["disc_steps"] for s in states] == [2, 2]
    for key in SHARED:
        assert_states_equal(states[0][key], states[1][key], key)


def test_fsdp2_saves_the_regularizer_once_and_every_rank_resumes_from_it(trained: Path) -> None:
    checkpoint = trained / "once-base" / "checkpoint-2"
    # Rank 0's whole state only, beside the host's sharded checkpoint; every rank loads it (rank 1
    # keeps only its own random stream beside it).
    assert sorted(p.name for p in checkpoint.glob("ganpo_regularizer*")) == [
        "ganpo_regularizer.pt",
        "ganpo_regularizer.rank1.local.pt",
    ]
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir()
    saved = _state(checkpoint / "ganpo_regularizer.pt")
    for result in _results(trained, "once-resumed"):
        for key in SHARED:
            assert_states_equal(result["loaded_state"][key], _as_lists(saved[key]), key)
    assert [e["step"] for e in _train_logs(_results(trained, "once-resumed")[0])] == [1, 2, 3, 4]


def test_fsdp2_resume_with_every_ranks_file_continues_bit_for_bit(trained: Path) -> None:
    """Each rank's dropout RNG stream advances with its own batch shapes, so only per-rank files
    (``save_every_rank``) make a resumed run identical to an uninterrupted one."""
    for name in ("ganpo_regularizer.pt", "ganpo_regularizer.rank1.pt"):
        resumed = _state(trained / "every-rank-resumed" / "checkpoint-4" / name)
        uninterrupted = _state(trained / "every-rank-base" / "checkpoint-4" / name)
        assert resumed["disc_steps"] == 4
        assert_states_equal(resumed, uninterrupted, name)
    base, resumed = (_train_logs(_results(trained, f"every-rank-{r}")[0]) for r in ("base", "resumed"))
    assert [e["loss"] for e in resumed[2:]] == [e["loss"] for e in base[2:]]


def _as_lists(value: Any) -> Any:
    """``value`` as the worker wrote it to JSON (tensors as lists)."""
    return json.loads(json.dumps(value, default=lambda t: t.tolist()))


def test_hsdp_on_four_processes_reduces_over_replicate_and_shard(
    tmp_path: Path, tiny_assets: Path, host_env: dict[str, str]
) -> None:
    """A real HSDP run: FSDP2 on accelerate's 2 × 2 mesh (``dp_replicate_size`` 2 × ``dp_shard_size``
    2), 4 processes. Every rank sees its own batch, so the regularizer reduces over all 4 (the mesh's
    ``dp`` dimension), not over the 2 ranks of one shard group: all 4 end with the same discriminators,
    μ and optimiser state."""
    mesh = {"dp_replicate_size": 2, "dp_shard_size": 2}
    run = {"name": "hsdp", "fsdp": 2, "lora": False, "reference": "trainer", "steps": 2,
           "state_dict_type": "SHARDED_STATE_DICT", "parallelism": mesh}  # fmt: skip
    _launch(tmp_path, [run], 4, tiny_assets, host_env, "log.txt")
    results = _results(tmp_path, "hsdp", ranks=4)
    assert [result["policy"] for result in results] == ["fsdp2"] * 4
    assert [result["group_size"] for result in results] == [4] * 4
    logs = _train_logs(results[0])
    assert len(logs) == 2 and all("ganpo/adv_loss" in entry for entry in logs)
    checkpoint = tmp_path / "hsdp" / "checkpoint-2"
    files = ["ganpo_regularizer.pt", *(f"ganpo_regularizer.rank{r}.pt" for r in (1, 2, 3))]
    states = [_state(checkpoint / name) for name in files]
    assert [s["disc_steps"] for s in states] == [2] * 4
    for other in states[1:]:
        for key in SHARED:
            assert_states_equal(states[0][key], other[key], key)


@pytest.mark.parametrize(
    ("sizes", "group"),
    [
        ({"dp_replicate_size": 2, "dp_shard_size": 2}, "dp"),  # HSDP: the batch differs over replicate × shard
        ({"dp_shard_size": 2, "tp_size": 2}, "dp"),  # tensor-parallel ranks share a batch
        ({"tp_size": 2}, None),  # no data-parallel dimension: the default group (every rank has the same batch)
    ],
)
def test_unit_data_parallel_group_choice_from_accelerates_mesh_sizes(sizes: dict[str, int], group: str | None) -> None:
    """A unit test of the choice alone (which mesh dimension the regularizer reduces over, from
    accelerate's parallelism sizes), on a stand-in mesh; HSDP also runs for real above, TP nowhere."""
    from accelerate.parallelism_config import ParallelismConfig

    from ganpo_plugins.adapter_kit.hf_trainer import accelerator_data_parallel_group

    class Mesh:
        def __getitem__(self, name: str) -> Any:
            return type("Dim", (), {"get_group": lambda self: f"group of {name}"})()

    accelerator = type(
        "Accelerator", (), {"parallelism_config": ParallelismConfig(**sizes), "torch_device_mesh": Mesh()}
    )
    assert accelerator_data_parallel_group(accelerator) == (None if group is None else f"group of {group}")
    without_mesh = type("Accelerator", (), {"parallelism_config": None, "torch_device_mesh": None})
    assert accelerator_data_parallel_group(without_mesh) is None  # DDP, plain FSDP, ZeRO: the default (whole) group
