"""What GANPO costs inside the real hosts: step time and peak memory of GANPO(DPO) vs plain DPO.

    python benchmarks/host_overhead.py                      # full size, Axolotl then OpenRLHF
    python benchmarks/host_overhead.py --tiny               # the same at a tiny size (CI smoke test)
    python benchmarks/host_overhead.py --hosts axolotl --axolotl-python /path/to/venv/bin/python
    python benchmarks/host_overhead.py --hosts trl --trl-python /path/to/venv/bin/python --vocab 32000

Each host runs its real training loop in a subprocess, the same model, data and seed every time:

- Axolotl: ``python -m axolotl.cli.train cfg.yml`` (``rl: dpo``), with the benchmark-only plugin
  ``ganpo_bench_axolotl.StepProbePlugin`` in ``plugins:`` (and ``ganpo_axolotl.GANPOPlugin`` in
  the GANPO runs); ``benchmarks/`` is on ``PYTHONPATH``.
- OpenRLHF: ``python -m openrlhf.cli.train_dpo`` (plain) or ``python -m ganpo_openrlhf.train_dpo``
  (GANPO), one process, ZeRO-2, through the benchmark-only launcher ``ganpo_bench_openrlhf``, with
  the test-only CPU shims ``tests/host_openrlhf/cpu_shims`` on ``PYTHONPATH`` as the OpenRLHF tests run
  it. OpenRLHF loads models in bf16 only; Axolotl runs fp32 here (the discriminators always run
  fp32).
- TRL: ``python benchmarks/ganpo_bench_trl.py``, TRL's own ``DPOTrainer`` (fp32, sdpa, gradient
  checkpointing as TRL defaults it), with the step probe as a ``TrainerCallback`` and, in the
  GANPO runs, ``ganpo_plugins.attach(trainer, ...)``.
- TRL GRPO (``--hosts trl-grpo``): ``python benchmarks/ganpo_bench_trl_grpo.py``, TRL's own
  ``GRPOTrainer`` at β = 0 (transformers generation, ``--batch`` prompts × 4 completions of at
  most ``--seq``/2 tokens per step), two alternated runs: plain GRPO and GRPO + GANPO (mask
  response; the reference a frozen copy of the initial policy, since TRL loads none at β = 0). Its
  FLOP bound, per micro-batch of N completions of padded length T with L completion positions,
  not counting generation (so an upper bound on the ratio)::

      GRPO  = 3 · N · T · F_lm(T)                   policy forward + backward
      GANPO = N · T · F_lm(T) + 11 · N · L · F_D(L) the adapter's reference forward; D step: 3N
                                                    sequences (each side's real and fake, the other
                                                    side's real) × 3, generator N × 2
      bound = 1 + (T · F_lm(T) + 11 · L · F_D(L)) / (3 · T · F_lm(T))

Four runs per round, alternated (plain, GANPO mask response, GANPO mask none, GANPO + savage,
plain, ...), so load from other processes falls on all of them alike. The savage run is GANPO
(mask response) with ``preference_loss: savage``, a GPO kind no host computes: ganpo_plugins
computes it from the captured hidden states and the output-embedding weight, chunked over the
completion tokens (``ganpo_plugins.formulas.logprobs``), in place of the host's DPO loss (which the host
still computes).

Per run: the wall time of each optimiser step (previous step's end to this one's end, measured
inside the training process), the first ``--warmup`` steps dropped; the peak RSS of the training
steps (``VmHWM`` reset when training starts) and the process's own peak RSS (loading included;
``results.json`` also has ``ru_maxrss`` from ``os.wait4``, which counts child processes such as
DeepSpeed's compiler). Also per step: the process's CPU time (all threads) and the load average.
Reported: medians over all kept steps of all rounds, the per-round medians (the spread), ratios to
plain DPO, the median CPU seconds per step and its ratio, and the load average during the kept
steps.

Model: a random Llama from ``examples/tiny/make_tiny_assets.py`` (default hidden 1024, 8 layers,
intermediate 2×hidden, 4 heads / 2 KV heads, its BPE vocabulary of a few hundred tokens).
``--vocab V`` builds the same model (the same builder) with a V-row embedding and LM head: the
tokenizer and data are unchanged (their ids are the first few hundred), but every logit row is
V wide, as in a real model, which is what the memory of ``[2B, T, V]`` logits is about. Data:
written here, prompts of about T/2 tokens and responses of 0.3–0.5 T tokens (chosen and rejected
drawn independently, so masks and padding matter). The discriminator is the paper's (the defaults;
``--tiny`` shrinks it to d=32 with the model).

Analytic FLOP bound (the ratio GANPO could reach if every FLOP cost the same), per micro-batch
of B pairs, padded LM length T, discriminator positions L per sequence (mask response: the
longest response in the micro-batch, after compaction; mask none: L = T)::

    LM   = 4 · 2B · T · F_lm(T)      policy forward + backward (3×) + reference forward (1×)
    GANPO = 22 · B · L · F_D(L)      D step: 2 discriminators × 3B sequences × (fwd + bwd = 3×)
                                     generator: 2 × B sequences × (fwd + input-grad bwd = 2×)
    bound = 1 + GANPO / LM = 1 + 22 · L · F_D(L) / (8 · T · F_lm(T))

    F_lm(T) = 2 · (n_layers · (2·H·d_q + 2·H·d_kv + 3·H·I) + V·H) + 2 · n_layers · T · d_q
              (weights, lm_head, causal attention: QKᵀ and AV over T/2 keys on average)
    F_D(L)  = 2 · (H·d + n_D · (4·d² + 2·d·f)) + 4 · n_D · L · d
              (input projection, encoder weights, full attention over L keys)

with H the LM hidden size, d_q = heads·head_dim, d_kv = kv_heads·head_dim, I the MLP width, V the
vocabulary, and d, f, n_D the discriminator's width, feed-forward width and layers. The savage
run adds, to the mask-response bound, the log-probabilities ganpo_plugins computes: per
completion token 2·V·H FLOPs per projection, the policy's forward, its checkpointed recompute
and its backward (input and weight gradients: 2×) plus the reference's forward, 5 projections::

    bound(savage) = bound(mask response) + 10 · C · V · H / (8 · T · F_lm(T))

with C the mean completion tokens per pair (chosen + rejected, end tokens included). It does not
subtract what the dropped host loss saves: the backward of the host's own LM head (4·V·H FLOPs per
position it projects: every one of the 2·T per pair on CPU, where TRL 1.16 does not compact), so
it overestimates the savage run's cost. Ignored:
norms, softmax, embeddings lookups, the discriminators' pooled heads and optimiser steps (all
O(parameters) or O(positions), tiny next to the matmuls). T is measured (median padded length of
the policy's inputs); L is the expected longest response (plus its end token) of a random
micro-batch of the data.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
SHIMS = REPO / "tests" / "host_openrlhf" / "cpu_shims"
PROBE_FILE = "step_probe.json"  # ganpo_bench_probe.PROBE_FILE (not imported: the driver never loads a host)
STATE_FILE = "ganpo_regularizer.pt"
PLAIN = "plain DPO"
SAVAGE = "GANPO + savage (GPO kind computed by ganpo_plugins)"


@dataclass(frozen=True)
class RunKind:
    """One of the alternated runs: its table row, its folder name, and its GANPO settings
    beside the discriminator (``None``: plain DPO)."""

    name: str
    slug: str
    ganpo: dict[str, str] | None


RUNS = (
    RunKind(PLAIN, "plain", None),
    RunKind("GANPO (mask response)", "response", {"mask": "response"}),
    RunKind("GANPO (mask none)", "none", {"mask": "none"}),
    RunKind(SAVAGE, "savage", {"mask": "response", "preference_loss": "savage"}),
)
PLAIN_GRPO = "plain GRPO"
GRPO_GENERATIONS = 4  # completions per prompt in the GRPO runs
GRPO_RUNS = (
    RunKind(PLAIN_GRPO, "grpo-plain", None),
    RunKind("GRPO + GANPO (mask response)", "grpo-ganpo", {"mask": "response"}),
)
WORDS = "red green blue cyan amber black white gold pink gray lime teal navy plum rose sand".split()
OPENRLHF_TEMPLATE = "User: {}\nAssistant: "
# Offline, no telemetry: the repository's offline.env (KEY=VALUE lines, # comments).
OFFLINE_ENV = dict(
    line.split("=", 1) for line in (REPO / "offline.env").read_text().splitlines() if line and not line.startswith("#")
)
FULL = {"hidden": 1024, "layers": 8, "seq": 256, "batch": 2, "steps": 6, "warmup": 2, "rounds": 3}
TINY = {"hidden": 64, "layers": 2, "seq": 64, "batch": 2, "steps": 4, "warmup": 1, "rounds": 1}
# --tiny only: a discriminator sized for a hidden-64 model (the paper's would be the whole cost).
TINY_DISCRIMINATOR = {"d_model": 32, "num_heads": 4, "ffn_size": 64}


# -- assets ------------------------------------------------------------------------------------


def _make_tiny_assets_module() -> Any:
    spec = importlib.util.spec_from_file_location("make_tiny_assets", REPO / "examples/tiny/make_tiny_assets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_rows(path: Path, tokenizer: Any, n_pairs: int, seq: int, seed: int) -> list[tuple[int, int]]:
    """Write ``n_pairs`` rows: a prompt of about ``seq/2`` tokens (with the chat template), chosen
    and rejected responses of independent lengths in [0.3, 0.5]·seq minus a margin for the
    template. Returns each pair's (chosen, rejected) response lengths in tokens, end token included."""
    rng = random.Random(seed)
    prompt_words = seq // 2 - 12
    low, high = round(0.3 * seq), round(0.5 * seq) - 4
    rows, lengths = [], []
    for _ in range(n_pairs):
        words = rng.choices(WORDS, k=prompt_words)
        n_chosen = rng.randint(low, high)
        chosen = (words + rng.choices(WORDS, k=n_chosen))[:n_chosen]  # the prompt's words, then more
        rejected = rng.choices(WORDS, k=rng.randint(low, high))
        row = {"prompt": "Repeat: " + " ".join(words), "chosen": " ".join(chosen), "rejected": " ".join(rejected)}
        rows.append(row)
        count = [len(tokenizer(row[k], add_special_tokens=False)["input_ids"]) + 1 for k in ("chosen", "rejected")]
        lengths.append((count[0], count[1]))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return lengths


def build_assets(
    workdir: Path, hidden: int, layers: int, seq: int, n_pairs: int, vocab: int | None
) -> tuple[Path, Path, list]:
    """The model folder, the data file and each pair's response lengths. With ``vocab``, the
    model is rebuilt by the tiny assets' own builder with a ``vocab``-row embedding and LM head
    (same seed, same tokenizer) into ``model-v<vocab>``."""
    from transformers import AutoTokenizer

    tiny = _make_tiny_assets_module()
    assets = tiny.make_assets(workdir / f"assets-h{hidden}-l{layers}", 64, hidden, layers)
    tokenizer = AutoTokenizer.from_pretrained(assets / "model")
    model_dir = assets / "model"
    if vocab is not None:
        if vocab < len(tokenizer):
            raise ValueError(f"--vocab {vocab} is smaller than the tokenizer's {len(tokenizer)} tokens")
        model_dir = assets / f"model-v{vocab}"
        if not (model_dir / "config.json").exists():
            model = tiny.build_model(vocab, hidden, layers, 0, tokenizer.pad_token_id, tokenizer.eos_token_id)
            model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
    data = assets / f"bench-prefs-t{seq}-n{n_pairs}.jsonl"
    lengths = write_rows(data, tokenizer, n_pairs, seq, seed=0)
    return model_dir, data, lengths


# -- FLOP bound -------------------------------------------------------------------------------


def lm_flops_per_token(model: dict[str, Any], seq: float) -> float:
    """F_lm(T): forward FLOPs per token of a Llama-style decoder (module docstring)."""
    h, n = model["hidden_size"], model["num_hidden_layers"]
    head_dim = model.get("head_dim") or h // model["num_attention_heads"]
    d_q = model["num_attention_heads"] * head_dim
    d_kv = model.get("num_key_value_heads", model["num_attention_heads"]) * head_dim
    weights = n * (2 * h * d_q + 2 * h * d_kv + 3 * h * model["intermediate_size"]) + model["vocab_size"] * h
    return 2 * weights + 2 * n * seq * d_q


def disc_flops_per_position(hidden: int, disc: Any, positions: float) -> float:
    """F_D(L): forward FLOPs per position of the Transformer discriminator (module docstring)."""
    d, f, n = disc.d_model, disc.ffn_size, disc.num_layers
    return 2 * (hidden * d + n * (4 * d * d + 2 * d * f)) + 4 * n * positions * d


def flop_bound(model: dict[str, Any], disc: Any, seq: float, positions: float) -> float:
    """``1 + 22 · L · F_D(L) / (8 · T · F_lm(T))``."""
    ganpo = 22 * positions * disc_flops_per_position(model["hidden_size"], disc, positions)
    return 1 + ganpo / (8 * seq * lm_flops_per_token(model, seq))


def grpo_flop_bound(model: dict[str, Any], disc: Any, seq: float, positions: float) -> float:
    """``1 + (T · F_lm(T) + 11 · L · F_D(L)) / (3 · T · F_lm(T))`` (module docstring, GRPO)."""
    lm = seq * lm_flops_per_token(model, seq)
    ganpo = 11 * positions * disc_flops_per_position(model["hidden_size"], disc, positions)
    return 1 + (lm + ganpo) / (3 * lm)


def logprob_flop_ratio(model: dict[str, Any], seq: float, completion_per_pair: float) -> float:
    """``10 · C · V · H / (8 · T · F_lm(T))``: ganpo_plugins' own log-probabilities (savage run)
    over the LM's training FLOPs (module docstring)."""
    head = model["vocab_size"] * model["hidden_size"]
    return 10 * completion_per_pair * head / (8 * seq * lm_flops_per_token(model, seq))


def expected_longest_response(lengths: list[tuple[int, int]], batch: int, samples: int = 20000) -> float:
    """E[longest response in a random micro-batch of ``batch`` pairs] (chosen and rejected)."""
    rng = random.Random(0)
    return statistics.fmean(max(max(p) for p in rng.sample(lengths, batch)) for _ in range(samples))


def ganpo_block(opts: argparse.Namespace, kind: RunKind) -> dict[str, Any]:
    """The GANPO settings of a GANPO run: the kind's (mask, preference loss) and the paper's
    discriminator, or with ``--tiny`` one sized for the tiny model."""
    assert kind.ganpo is not None
    return {**({"discriminator": dict(TINY_DISCRIMINATOR)} if opts.tiny else {}), **kind.ganpo}


# -- running a host ------------------------------------------------------------------------------


@dataclass
class Run:
    host: str
    name: str
    round: int
    returncode: int
    wall_s: float
    maxrss_with_children_mib: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    probe: dict[str, Any] = field(default_factory=dict)
    regularizer_state: bool = False

    def kept(self, warmup: int, key: str = "interval_s") -> list[float]:
        return [s[key] for s in self.probe.get("steps", [])[warmup:]]

    @property
    def train_peak_mib(self) -> float:
        steps = self.probe.get("steps", [])
        return steps[-1]["peak_mib"] if steps and steps[-1]["peak_mib"] is not None else math.nan

    @property
    def process_peak_mib(self) -> float:
        """The training process's own peak RSS: model loading or training steps, whichever is higher."""
        before = self.probe.get("peak_before_training_mib")
        return max(self.train_peak_mib, math.nan if before is None else before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(threads: int, extra_path: list[Path]) -> dict[str, str]:
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in extra_path), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _launch(cmd: list[str], env: dict[str, str], cwd: Path, log: Path, timeout: float) -> tuple[int, float, float]:
    """Run ``cmd``; returns (exit code, wall seconds, ru_maxrss of that process and its children, MiB)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = start + timeout
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
                    _, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.2)
        except BaseException:  # interrupted or terminated: never leave the training run behind
            os.killpg(proc.pid, signal.SIGKILL)
            os.wait4(proc.pid, 0)
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024  # Linux: KiB


def _python_has(python: str, module: str, env: dict[str, str]) -> bool:
    code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    return subprocess.run([python, "-c", code], env=env, capture_output=True).returncode == 0


def _version(python: str, dist: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "?"


class AxolotlHost:
    name = "axolotl"

    def __init__(self, python: str, opts: argparse.Namespace, model: Path, data: Path) -> None:
        self.python, self.opts, self.model, self.data = python, opts, model, data
        self.env = _env(opts.threads, [BENCH])
        self.title = (
            f"Axolotl {_version(python, 'axolotl')} (python -m axolotl.cli.train, fp32, sdpa; "
            f"torch {_version(python, 'torch')})"
        )

    def available(self) -> str | None:
        ok = _python_has(self.python, "axolotl.cli.train", self.env)
        return None if ok else f"{self.python} cannot import axolotl.cli.train"

    def config(self, out: Path, kind: RunKind) -> dict[str, Any]:
        o = self.opts
        cfg: dict[str, Any] = {
            "base_model": str(self.model),
            "rl": "dpo",
            "rl_beta": 0.1,
            "datasets": [{"path": str(self.data), "ds_type": "json", "type": "chatml.default", "split": "train"}],
            "dataset_prepared_path": str(o.workdir / "axolotl" / "prepared"),
            "output_dir": str(out),
            "val_set_size": 0,
            "sequence_len": o.seq,
            "micro_batch_size": o.batch,
            "gradient_accumulation_steps": 1,
            "max_steps": o.steps,
            "learning_rate": 1.0e-5,
            "optimizer": "adamw_torch",
            "lr_scheduler": "cosine",
            "warmup_steps": 0,
            "logging_steps": 1,
            "save_strategy": "no",
            "seed": 42,
            "fp16": False,
            "bf16": False,
            "tf32": False,
            "attn_implementation": "sdpa",
            "plugins": ["ganpo_bench_axolotl.StepProbePlugin"],
        }
        if kind.ganpo is not None:
            cfg["plugins"].append("ganpo_axolotl.GANPOPlugin")
            cfg["ganpo"] = ganpo_block(self.opts, kind)
        return cfg

    def run(self, folder: Path, kind: RunKind) -> tuple[int, float, float, dict[str, Any], bool]:
        import yaml

        out = folder / "out"
        (folder / "cfg.yml").write_text(yaml.safe_dump(self.config(out, kind)))
        cmd = [self.python, "-m", "axolotl.cli.train", str(folder / "cfg.yml")]
        code, wall, rss = _launch(cmd, self.env, folder, folder / "log.txt", self.opts.run_timeout)
        probe = json.loads((out / PROBE_FILE).read_text()) if (out / PROBE_FILE).exists() else {}
        return code, wall, rss, probe, (out / STATE_FILE).exists()


class OpenRLHFHost:
    name = "openrlhf"

    def __init__(self, python: str, opts: argparse.Namespace, model: Path, data: Path) -> None:
        self.python, self.opts, self.model, self.data = python, opts, model, data
        self.env = _env(opts.threads, [SHIMS, BENCH])
        default_cache = Path.home() / ".cache" / "ganpo-plugins" / "torch_extensions" / "openrlhf"
        self.env.setdefault("TORCH_EXTENSIONS_DIR", str(default_cache))
        self.env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")  # as torchrun would
        self.title = (
            f"OpenRLHF {_version(python, 'openrlhf')} (python -m openrlhf.cli.train_dpo / ganpo_openrlhf.train_dpo, "
            f"1 process, ZeRO-2, bf16, sdpa; deepspeed {_version(python, 'deepspeed')}, "
            f"torch {_version(python, 'torch')})"
        )

    def available(self) -> str | None:
        for module in ("openrlhf.cli.train_dpo", "ganpo_openrlhf.train_dpo"):
            if not _python_has(self.python, module, self.env):
                return f"{self.python} cannot import {module}"
        return None

    def flags(self, folder: Path) -> list[str]:
        o = self.opts
        return [
            "--model.model_name_or_path", str(self.model),
            "--data.dataset", str(self.data),
            "--data.prompt_key", "prompt",
            "--data.input_template", OPENRLHF_TEMPLATE,
            "--data.max_samples", str(o.steps * o.batch),
            "--data.max_len", str(o.seq),
            "--train.micro_batch_size", str(o.batch),
            "--train.batch_size", str(o.batch),
            "--train.max_epochs", "1",
            "--train.seed", "42",
            "--ds.zero_stage", "2",
            "--ds.attn_implementation", "sdpa",
            "--adam.lr", "1e-5",
            "--ckpt.output_dir", str(folder / "out"),
            "--ckpt.path", str(folder / "ckpt"),
        ]  # fmt: skip

    def run(self, folder: Path, kind: RunKind) -> tuple[int, float, float, dict[str, Any], bool]:
        module = "openrlhf.cli.train_dpo" if kind.ganpo is None else "ganpo_openrlhf.train_dpo"
        flags = self.flags(folder)
        if kind.ganpo is not None:
            for key, value in ganpo_block(self.opts, kind).items():
                if isinstance(value, dict):  # the discriminator's settings
                    flags += [arg for sub, v in value.items() for arg in (f"--ganpo.{key}.{sub}", str(v))]
                else:
                    flags += [f"--ganpo.{key}", str(value)]
        probe_path = folder / PROBE_FILE
        cmd = [self.python, "-m", "ganpo_bench_openrlhf", str(probe_path), module, *flags]
        env = {**self.env, "MASTER_PORT": str(_free_port())}
        code, wall, rss = _launch(cmd, env, folder, folder / "log.txt", self.opts.run_timeout)
        probe = json.loads(probe_path.read_text()) if probe_path.exists() else {}
        return code, wall, rss, probe, (folder / "out" / STATE_FILE).exists()


class TRLHost:
    name = "trl"

    def __init__(self, python: str, opts: argparse.Namespace, model: Path, data: Path) -> None:
        self.python, self.opts, self.model, self.data = python, opts, model, data
        self.env = _env(opts.threads, [BENCH])
        self.title = (
            f"TRL {_version(python, 'trl')} (trl.DPOTrainer via benchmarks/ganpo_bench_trl.py, fp32, sdpa, "
            "gradient checkpointing; "
            f"transformers {_version(python, 'transformers')}, torch {_version(python, 'torch')})"
        )

    def available(self) -> str | None:
        for module in ("trl", "datasets", "ganpo_trl"):
            if not _python_has(self.python, module, self.env):
                return f"{self.python} cannot import {module}"
        return None

    def run(self, folder: Path, kind: RunKind) -> tuple[int, float, float, dict[str, Any], bool]:
        o, out = self.opts, folder / "out"
        cmd = [
            self.python, str(BENCH / "ganpo_bench_trl.py"),
            "--model", str(self.model),
            "--data", str(self.data),
            "--output-dir", str(out),
            "--max-length", str(o.seq),
            "--batch", str(o.batch),
            "--steps", str(o.steps),
        ]  # fmt: skip
        if kind.ganpo is not None:
            cmd += ["--ganpo", json.dumps(ganpo_block(o, kind))]
        code, wall, rss = _launch(cmd, self.env, folder, folder / "log.txt", o.run_timeout)
        probe = json.loads((out / PROBE_FILE).read_text()) if (out / PROBE_FILE).exists() else {}
        return code, wall, rss, probe, (out / STATE_FILE).exists()


class TRLGRPOHost:
    """TRL's ``GRPOTrainer`` (β = 0): plain GRPO vs GRPO + GANPO, alternated, same seed. ``--batch``
    is the number of prompts per step, each with ``GRPO_GENERATIONS`` completions of at most
    ``--seq``/2 tokens."""

    name = "trl-grpo"
    runs = GRPO_RUNS

    def __init__(self, python: str, opts: argparse.Namespace, model: Path, data: Path) -> None:
        self.python, self.opts, self.model, self.data = python, opts, model, data
        self.env = _env(opts.threads, [BENCH])
        self.max_completion = opts.seq // 2
        self.title = (
            f"TRL {_version(python, 'trl')} (trl.GRPOTrainer via benchmarks/ganpo_bench_trl_grpo.py, beta 0, fp32, "
            f"sdpa, transformers generation, {opts.batch} prompts x {GRPO_GENERATIONS} completions of at most "
            f"{self.max_completion} tokens per step; transformers {_version(python, 'transformers')}, "
            f"torch {_version(python, 'torch')})"
        )

    def available(self) -> str | None:
        return TRLHost.available(self)  # type: ignore[arg-type]

    def run(self, folder: Path, kind: RunKind) -> tuple[int, float, float, dict[str, Any], bool]:
        o, out = self.opts, folder / "out"
        cmd = [
            self.python, str(BENCH / "ganpo_bench_trl_grpo.py"),
            "--model", str(self.model),
            "--data", str(self.data),
            "--output-dir", str(out),
            "--prompts", str(o.batch),
            "--generations", str(GRPO_GENERATIONS),
            "--max-completion", str(self.max_completion),
            "--steps", str(o.steps),
        ]  # fmt: skip
        if kind.ganpo is not None:
            cmd += ["--ganpo", json.dumps(ganpo_block(o, kind))]
        code, wall, rss = _launch(cmd, self.env, folder, folder / "log.txt", o.run_timeout)
        probe = json.loads((out / PROBE_FILE).read_text()) if (out / PROBE_FILE).exists() else {}
        return code, wall, rss, probe, (out / STATE_FILE).exists()

    def bounds(self, model_cfg: dict, disc: Any, seq: float, shapes: list[list[int]]) -> tuple[dict[str, float], str]:
        # The discriminators see the completion positions: at most the generated length.
        longest = float(self.max_completion)
        bound = grpo_flop_bound(model_cfg, disc, seq, min(longest, seq))
        note = (
            f"FLOP bound (GRPO, generation not counted, so an upper bound) = 1 + (T·F_lm(T) + 11·L·F_D(L)) / "
            f"(3·T·F_lm(T)) with L = {longest:g} (the completion length): the adapter's reference forward "
            "(β = 0: TRL runs none) and the discriminators, over the policy's forward + backward"
        )
        return {PLAIN_GRPO: 1.0, GRPO_RUNS[1].name: bound}, note


HOSTS = {"axolotl": AxolotlHost, "openrlhf": OpenRLHFHost, "trl": TRLHost, "trl-grpo": TRLGRPOHost}


# -- report -----------------------------------------------------------------------------------


def _fmt(values: list[float], spec: str = ".2f") -> str:
    return " / ".join(format(v, spec) for v in values) if values else "-"


def _loads() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def summarise(host: Any, runs: list[Run], opts: argparse.Namespace, model_cfg: dict, lengths: list) -> dict:
    from ganpo_plugins import parse_config

    kinds = getattr(host, "runs", RUNS)
    disc = parse_config(ganpo_block(opts, kinds[1])).discriminator
    shapes = [s for r in runs for s in r.probe.get("policy_input_shapes", [])]
    seq = statistics.median(s[1] for s in shapes) if shapes else float(opts.seq)
    longest = expected_longest_response(lengths, opts.batch)
    completion = statistics.fmean(c + r for c, r in lengths)
    logprob_share = logprob_flop_ratio(model_cfg, seq, completion)
    response_bound = flop_bound(model_cfg, disc, seq, min(longest, seq))
    bounds = {
        PLAIN: 1.0,
        "GANPO (mask response)": response_bound,
        "GANPO (mask none)": flop_bound(model_cfg, disc, seq, seq),
        SAVAGE: response_bound + logprob_share,
    }
    note = None
    if hasattr(host, "bounds"):
        bounds, note = host.bounds(model_cfg, disc, seq, shapes)
    rows: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        group = [r for r in runs if r.name == kind.name]
        rows[kind.name] = {
            "s_per_step": _median([t for r in group for t in r.kept(opts.warmup)]),
            "round_medians": [_median(r.kept(opts.warmup)) for r in group],
            "cpu_s_per_step": _median([t for r in group for t in r.kept(opts.warmup, "cpu_s")]),
            "compute_s": _median([t for r in group for t in r.kept(opts.warmup, "compute_s")]),
            "steps_kept": sum(len(r.kept(opts.warmup)) for r in group),
            "train_peak_mib": _median([r.train_peak_mib for r in group]),
            "process_peak_mib": _median([r.process_peak_mib for r in group]),
            "maxrss_with_children_mib": _median([r.maxrss_with_children_mib for r in group]),
            "flop_bound": bounds[kind.name],
        }
    plain = rows[kinds[0].name]
    for row in rows.values():
        row["time_ratio"] = row["s_per_step"] / plain["s_per_step"]
        row["round_ratios"] = [a / b for a, b in zip(row["round_medians"], plain["round_medians"], strict=True)]
        row["cpu_ratio"] = row["cpu_s_per_step"] / plain["cpu_s_per_step"]
        row["peak_ratio"] = row["train_peak_mib"] / plain["train_peak_mib"]
        row["process_peak_ratio"] = row["process_peak_mib"] / plain["process_peak_mib"]

    step_loads = [s["load1"] for r in runs for s in r.probe.get("steps", [])[opts.warmup :]]
    print(f"\n## {host.title}")
    print(
        f"{len(runs) // len(kinds)} round(s) x {len(kinds)} alternated runs, {opts.steps} steps each, first "
        f"{opts.warmup} dropped; batch {opts.batch} {'prompts' if note else 'pairs'}; OMP_NUM_THREADS={opts.threads}; "
        f"measured padded length T = {seq:g} (policy input [N, T])"
        + ("" if note else f"; expected longest response L = {longest:.1f} tokens")
    )
    print(
        f"1-min load average at the kept steps: median {_median(step_loads):.2f}, "
        f"range {min(step_loads, default=math.nan):.2f}-{max(step_loads, default=math.nan):.2f}\n"
    )
    print(
        "| run | s/step (median) | per-round medians | time ratio | per-round ratios | CPU s/step | CPU ratio "
        "| FLOP bound | train peak RSS MiB | peak ratio | process peak RSS MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['s_per_step']:.3f} | {_fmt(row['round_medians'], '.3f')} | {row['time_ratio']:.3f} "
            f"| {_fmt(row['round_ratios'], '.3f')} | {row['cpu_s_per_step']:.3f} | {row['cpu_ratio']:.3f} "
            f"| {row['flop_bound']:.3f} | {row['train_peak_mib']:.0f} | {row['peak_ratio']:.3f} "
            f"| {row['process_peak_mib']:.0f} |"
        )
    f_lm, f_d = lm_flops_per_token(model_cfg, seq), disc_flops_per_position(model_cfg["hidden_size"], disc, longest)
    if note is not None:
        print(f"\n{note}; F_lm(T={seq:g}) = {f_lm / 1e6:.1f} MFLOP/token")
        return {"host": host.name, "title": host.title, "seq": seq, "rows": rows}
    print(
        f"\nFLOP bound = 1 + 22·L·F_D(L) / (8·T·F_lm(T)): F_lm(T={seq:g}) = {f_lm / 1e6:.1f} MFLOP/token, "
        f"F_D(L={longest:.1f}) = {f_d / 1e6:.2f} MFLOP/position, "
        f"F_D(T) = {disc_flops_per_position(model_cfg['hidden_size'], disc, seq) / 1e6:.2f} MFLOP/position "
        f"(discriminator d={disc.d_model}, {disc.num_layers} layers, ffn {disc.ffn_size}); savage adds "
        f"10·C·V·H / (8·T·F_lm(T)) = {logprob_share:.3f} for its log-probabilities (C = {completion:.1f} "
        "completion tokens per pair)"
    )
    return {"host": host.name, "title": host.title, "seq": seq, "longest_response": longest, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny model and few steps (CI smoke test, 0.5-2 min)")
    parser.add_argument("--hosts", default="axolotl,openrlhf", help="comma-separated: axolotl, openrlhf, trl, trl-grpo")
    parser.add_argument("--axolotl-python", default=sys.executable, help="interpreter with Axolotl installed")
    parser.add_argument("--openrlhf-python", default=sys.executable, help="interpreter with OpenRLHF installed")
    parser.add_argument("--trl-python", default=sys.executable, help="interpreter with TRL installed")
    parser.add_argument(
        "--vocab", type=int, default=None, help="embedding and LM-head rows (default: the tokenizer's, a few hundred)"
    )
    parser.add_argument("--workdir", type=Path, default=REPO / "outputs" / "host_overhead")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the training processes")
    parser.add_argument("--run-timeout", type=float, default=1800, help="seconds before a run is killed")
    for key, value in FULL.items():
        parser.add_argument(f"--{key}", type=int, default=None, help=f"default {value} ({TINY[key]} with --tiny)")
    opts = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` stops the current run too (see _launch)
    for key, value in (TINY if opts.tiny else FULL).items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    if opts.seq > 512 or opts.seq < 32:
        parser.error(f"--seq {opts.seq}: the tiny assets' model has 512 positions; choose 32..512")
    if opts.warmup >= opts.steps:
        parser.error(f"--warmup {opts.warmup} must be smaller than --steps {opts.steps}")
    hosts = [h.strip() for h in opts.hosts.split(",") if h.strip()]
    unknown = sorted(set(hosts) - set(HOSTS))
    if unknown:
        parser.error(f"--hosts: unknown {unknown}; choose from {', '.join(HOSTS)}")
    opts.workdir = opts.workdir.resolve()
    opts.workdir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    n_pairs = max(64, opts.steps * opts.batch)
    model, data, lengths = build_assets(opts.workdir, opts.hidden, opts.layers, opts.seq, n_pairs, opts.vocab)
    model_cfg = json.loads((model / "config.json").read_text())
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(
        f"# GANPO overhead in the real hosts: random Llama H={opts.hidden}, {opts.layers} layers, "
        f"vocab {model_cfg['vocab_size']}, seq {opts.seq}, batch {opts.batch} pairs"
    )
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={opts.threads}, load average {_loads()}")

    results = []
    pythons = {"axolotl": opts.axolotl_python, "openrlhf": opts.openrlhf_python, "trl": opts.trl_python,
               "trl-grpo": opts.trl_python}  # fmt: skip
    for host_name in hosts:
        host = HOSTS[host_name](pythons[host_name], opts, model, data)
        missing = host.available()
        if missing:
            print(f"\n## {host_name}: skipped ({missing})")
            results.append({"host": host_name, "skipped": missing})
            continue
        runs: list[Run] = []
        for rnd in range(1, opts.rounds + 1):
            for kind in getattr(host, "runs", RUNS):
                name = kind.name
                folder = opts.workdir / host_name / f"r{rnd}-{kind.slug}"
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                load_before = os.getloadavg()
                code, wall, rss, probe, state = host.run(folder, kind)
                run = Run(host_name, name, rnd, code, wall, rss, load_before, os.getloadavg(), probe, state)
                runs.append(run)
                steps = len(probe.get("steps", []))
                print(
                    f"[{host_name}] round {rnd} {name}: exit {code}, {wall:.0f} s wall, {steps} steps timed, "
                    f"load {load_before[0]:.2f}->{run.load_after[0]:.2f}",
                    flush=True,
                )
                problem = None
                if code != 0 or steps != opts.steps:
                    problem = f"exit {code} with {steps}/{opts.steps} steps timed"
                elif state != (kind.ganpo is not None):
                    problem = f"regularizer state {'written' if state else 'missing'} in a {name} run"
                if problem:
                    print(f"[{host_name}] {problem}; see {folder / 'log.txt'}", file=sys.stderr)
                    return 1
                for heavy in ("out", "ckpt"):  # keep logs and probes, not model copies
                    if (folder / heavy).exists():
                        keep = folder / heavy / PROBE_FILE
                        if keep.exists():
                            shutil.copy(keep, folder / PROBE_FILE)
                        shutil.rmtree(folder / heavy)
        summary = summarise(host, runs, opts, model_cfg, lengths)
        summary["runs"] = [r.__dict__ for r in runs]
        results.append(summary)

    total = time.perf_counter() - started
    (opts.workdir / "results.json").write_text(json.dumps({"options": vars(opts), "results": results}, default=str))
    print(f"\ntotal wall time {total:.0f} s; raw data: {opts.workdir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
