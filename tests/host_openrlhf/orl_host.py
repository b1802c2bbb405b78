"""Run the real OpenRLHF CLIs (through our launchers) in subprocesses on CPU, and read back what
they wrote. Shared by ``tests/host_openrlhf`` and ``tests/reliability/test_openrlhf_*.py``.

Subprocesses get ``cpu_shims/`` on ``PYTHONPATH`` (the ``flash_attn`` import stub and the four
CUDA-only spots patched in ``sitecustomize.py``) and a persistent DeepSpeed op cache
(``TORCH_EXTENSIONS_DIR``; tox sets ``~/.cache/ganpo-plugins/torch_extensions/openrlhf``): the
first run on a machine JIT-compiles two C++ ops (minutes), later runs reuse them.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

SHIMS = Path(__file__).resolve().parent / "cpu_shims"
# Without TORCH_EXTENSIONS_DIR (tox sets it): one cache per interpreter, since DeepSpeed rebuilds its
# ops (minutes) whenever the torch it compiles against lives elsewhere.
_VENV = hashlib.sha1(sys.prefix.encode()).hexdigest()[:8]
DEFAULT_EXTENSIONS_DIR = Path.home() / ".cache" / "ganpo-plugins" / "torch_extensions" / f"openrlhf-{_VENV}"
TEMPLATE = "User: {}\nAssistant: "
# A discriminator small enough for a hidden-64 model on CPU.
TINY_D = ["--ganpo.discriminator.d_model", "32", "--ganpo.discriminator.num_heads", "4"]
TINY_D += ["--ganpo.discriminator.ffn_size", "64"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(base: Mapping[str, str], nproc: int) -> dict[str, str]:
    env = dict(base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SHIMS), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(DEFAULT_EXTENSIONS_DIR))
    env["OMP_NUM_THREADS"] = "1" if nproc > 1 else env.get("OMP_NUM_THREADS", "2")
    if nproc == 1:  # what torchrun would set for a single process
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    return env


def command(module: str, args: Sequence[str], nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", module, *args]
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    return [*launcher, f"--master_port={free_port()}", "-m", module, *args]


def run(
    module: str, args: Sequence[str], log: Path, base_env: Mapping[str, str], nproc: int = 1, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args`` (``torchrun`` for ``nproc > 1``); output saved to ``log``."""
    result = subprocess.run(
        command(module, args, nproc),
        env=subprocess_env(base_env, nproc),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(result.stdout)
    return result


def check(result: subprocess.CompletedProcess[str], log: Path) -> None:
    assert result.returncode == 0, f"exit {result.returncode}; log {log}:\n{result.stdout[-6000:]}"


def dpo_args(assets: Path, out: Path, *extra: str, samples: int = 16, batch: int = 4, micro: int = 2) -> list[str]:
    """Flags of a tiny OpenRLHF DPO run writing under ``out`` (``ckpt/``, ``model/``, ``tb/``)."""
    return [
        "--model.model_name_or_path", str(assets / "model"),
        "--data.dataset", str(assets / "prefs.jsonl"),
        "--data.prompt_key", "prompt",
        "--data.input_template", TEMPLATE,
        "--data.max_samples", str(samples),
        "--data.max_len", "128",
        "--train.micro_batch_size", str(micro),
        "--train.batch_size", str(batch),
        "--ds.attn_implementation", "eager",
        "--adam.lr", "1e-3",
        "--ckpt.output_dir", str(out / "model"),
        "--ckpt.path", str(out / "ckpt"),
        "--logger.tensorboard_dir", str(out / "tb"),
        "--logger.wandb.run_name", "run",
        *extra,
    ]  # fmt: skip


def scalars(tb_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar OpenRLHF logged to TensorBoard under ``tb_dir``: ``{tag: {step: value}}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for run_dir in sorted({p.parent for p in tb_dir.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(run_dir))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def regularizer_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
