"""GPU evidence kit: GANPO(DPO) vs plain DPO in the real TRL DPOTrainer, the regularizer step at GPU
size, and numerics on the GPU, in one command, meant to finish within 5 minutes on one 80–141 GB GPU,
model build included (not yet run on one: see benchmarks/README.md).

    python benchmarks/gpu_check.py [--out FILE.md]

Without a CUDA GPU the same command runs a tiny CPU smoke version (20–60 s on 2 shared cores) and says so: its numbers
check that the script works end to end, not what GANPO costs. The exit code is 1 when a numerics check
fails.

1. **DPO vs GANPO(DPO) in TRL.** A random-initialised Llama built locally, directly on the GPU (no hub,
   no download), at a real shape: Llama-3-8B's if the estimated training peak (bf16 policy, its
   gradients and AdamW moments, a transient optimiser copy, the bf16 reference, and activations with
   gradient checkpointing: :func:`estimated_training_bytes`) fits in 90 % of the free GPU memory, else
   Llama-3.2-3B's, else Llama-3.2-1B's; on an out-of-memory error the next smaller shape is tried.
   Data: token ids drawn at random, prompts of 512–1024 tokens, chosen and rejected responses of
   300–1000 tokens each, drawn independently, at most 2048 tokens per sequence with the end token; 2
   pairs per step. TRL needs text and a tokenizer, so each id ``i`` is written as the word ``w<i>`` and
   a word-level tokenizer maps it back: the model sees exactly the ids drawn. Both runs use
   ``trl.DPOTrainer`` unchanged (bf16, gradient checkpointing, same data and order, same seed; policy
   and reference are built afresh for every run from the same seed, so every run starts from the same
   weights); GANPO runs add the one documented call
   ``attach_regularizer(trainer, {"regularizer": "ganpo", "weight": 1.0})`` (the paper's discriminator,
   response positions). Runs alternate DPO, GANPO, DPO, GANPO, so that anything else on the machine
   falls on both alike.

   *Step time*: a ``TrainerCallback`` reads ``time.perf_counter()`` after ``torch.cuda.synchronize()``
   at ``on_step_begin`` and at ``on_step_end``: one optimiser step's forwards (policy, reference), the
   regularizer, backward, gradient clipping and optimiser step; fetching the batch and logging fall
   outside. The first ``warmup`` steps of every run are dropped; reported is the median of all kept
   steps, and the median of each round. *Peak memory*: ``torch.cuda.max_memory_allocated()`` over the
   training steps, reset just before each run's ``train()``, models already built (on CPU: the
   process's peak RSS, ``VmHWM``, reset the same way). ``PYTORCH_CUDA_ALLOC_CONF`` defaults to
   ``expandable_segments:True`` (less fragmentation near the 8B shape's peak; it changes what is
   reserved, not what is allocated).

   *FLOP bound*: the ratio GANPO's step time would have if every FLOP cost the same. Per pair with
   prompt p and responses c and r (end token included; padding ignored)::

       LM(pair)    = 5 · Σ_{n ∈ {p+c, p+r}} n · F_lm(n)    policy forward, its recompute (gradient
                                                           checkpointing), backward (2×); reference forward
       GANPO(pair) = 11 · Σ_{m ∈ {c, r}} m · F_D(m)        discriminator step: D+ and D− score 3 sequences
                                                           each, 3 of length c and 3 of length r in all,
                                                           forward + backward (3×); generator term: one
                                                           sequence per discriminator, forward + backward
                                                           into h (2×)
       bound       = 1 + Σ_pairs GANPO(pair) / Σ_pairs LM(pair)

   with ``F_lm(n)`` and ``F_D(m)`` the forward FLOPs per token of the decoder and per position of the
   discriminator as ``benchmarks/host_overhead.py`` defines them (derived in its docstring and in
   benchmarks/README.md). For the GPU data it gives 1.0013 for Llama-3-8B, 1.0028 for Llama-3.2-3B and
   1.0070 for Llama-3.2-1B: DESIGN.md's ~0.3 % (8B) order, a little lower because the recompute pass
   adds to the LM's side and padding is not counted.

2. **The regularizer step alone** (``benchmarks/regularizer_step.py``'s comparison, imported): B=4
   pairs, T=2048, H=4096, the paper's discriminator, fp32 latents: the public release's call pattern
   (six separate discriminator forwards on full, padded sequences) against ours, batched, over the full
   sequences and over the response positions only. Median seconds per step (synchronised) and the
   speed-up over the release's pattern.

3. **Numerics.** (a) From the GANPO runs' own logs: with bf16 policy and reference hidden states and
   fp32 discriminators, the training loss, the adversarial term and both discriminators' losses are
   finite at every step. (b) A small case (H=64, 2 pairs of 32 positions, the paper's discriminator with
   dropout 0, seed 0, fp32) runs ``GANPORegularizer`` for 3 steps on the CPU and on the GPU with TF32
   off: the adversarial loss and both discriminator losses agree within rtol 1e-4, and so does the
   gradient into the policy latents (max |difference| / max |value|). Without a GPU this compares two
   CPU runs, which only exercises the code path.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
import trl
from datasets import Dataset
from ganpo_trl import attach_regularizer
from host_overhead import disc_flops_per_position, lm_flops_per_token
from regularizer_step import PATTERNS, compare_patterns, make_batch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    PrinterCallback,
    TrainerCallback,
)
from trl import DPOConfig, DPOTrainer

import ganpo_plugins
from ganpo_plugins import GANPORegularizer, RegularizerContext, StepInfo, parse_config

GANPO_CONFIG: dict[str, Any] = {"regularizer": "ganpo", "weight": 1.0}
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3; token id i >= 4 is the word f"w{i}"
NO_GPU_NOTICE = (
    "NO GPU FOUND: this is the CPU smoke version (tiny Llama, tiny shapes, CPU). Its numbers show that the "
    "script runs end to end; they say nothing about what GANPO costs on a GPU."
)
NUMERICS_RTOL = 1e-4
NUMERICS_METRICS = ("adv_loss", "d_pos/loss", "d_neg/loss")
LOGGED_LOSSES = ("loss", "ganpo/adv_loss", "ganpo/d_pos/loss", "ganpo/d_neg/loss")
RUN_NAMES = ("plain DPO", "GANPO(DPO)")
GANPO_RUN = RUN_NAMES[1]
SEED = 0


@dataclass(frozen=True)
class LlamaShape:
    """The dimensions of a Llama model (those of Meta's published configurations for the real ones)."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    tied_embeddings: bool
    head_dim: int | None = None

    def config(self) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            intermediate_size=self.ffn,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            head_dim=self.head_dim or self.hidden // self.heads,
            max_position_embeddings=8192,
            rope_theta=500000.0,
            tie_word_embeddings=self.tied_embeddings,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            use_cache=False,
        )


LLAMA_3_8B = LlamaShape("Llama-3-8B", 4096, 32, 32, 8, 14336, 128256, tied_embeddings=False)
LLAMA_3_2_3B = LlamaShape("Llama-3.2-3B", 3072, 28, 24, 8, 8192, 128256, tied_embeddings=True, head_dim=128)
LLAMA_3_2_1B = LlamaShape("Llama-3.2-1B", 2048, 16, 32, 8, 8192, 128256, tied_embeddings=True)
TINY_LLAMA = LlamaShape("tiny Llama (CPU smoke)", 64, 2, 4, 2, 128, 512, tied_embeddings=False)


@dataclass(frozen=True)
class Plan:
    """The sizes of one invocation: GPU or CPU smoke."""

    shapes: tuple[LlamaShape, ...]  # largest first; the first that fits is used
    pairs_per_step: int
    max_length: int
    prompt_tokens: tuple[int, int]  # inclusive range
    response_tokens: tuple[int, int]  # inclusive range, end token excluded
    rounds: int
    steps: int
    warmup: int
    regularizer_step: tuple[int, int, int]  # B pairs, T, H
    regularizer_repeats: int
    dtype: torch.dtype


GPU_PLAN = Plan(
    shapes=(LLAMA_3_8B, LLAMA_3_2_3B, LLAMA_3_2_1B),
    pairs_per_step=2,
    max_length=2048,
    prompt_tokens=(512, 1024),
    response_tokens=(300, 1000),
    rounds=2,
    steps=6,
    warmup=2,
    regularizer_step=(4, 2048, 4096),
    regularizer_repeats=5,
    dtype=torch.bfloat16,
)
CPU_PLAN = Plan(
    shapes=(TINY_LLAMA,),
    pairs_per_step=2,
    max_length=96,
    prompt_tokens=(24, 48),
    response_tokens=(14, 47),
    rounds=2,
    steps=3,
    warmup=1,
    regularizer_step=(2, 32, 64),
    regularizer_repeats=2,
    dtype=torch.bfloat16,
)


@dataclass
class RunResult:
    """One training run: its name (one of :data:`RUN_NAMES`), the seconds of each step, the peak memory
    of its training steps and the entries of ``trainer.state.log_history`` with a training loss."""

    name: str
    step_seconds: list[float]
    peak_mib: float
    logs: list[dict[str, float]]


class Report:
    """Markdown lines, printed as they come and, with ``--out``, rewritten to the file after each
    addition, so that a run cut short still leaves what it measured."""

    def __init__(self, out: Path | None) -> None:
        self.out = out
        self._lines: list[str] = []

    def lines(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
        self._lines.extend(lines)
        if self.out is not None:
            self.out.write_text("\n".join(self._lines) + "\n")

    def section(self, title: str) -> None:
        self.lines("", f"## {title}", "")

    def note(self, text: str) -> None:
        self.lines(f"- {text}")


# -- device helpers -----------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts again from the current RSS


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


@contextlib.contextmanager
def tf32_disabled() -> Iterator[None]:
    """fp32 matmuls in full precision (``"highest"``: no TF32, the switch behind
    ``torch.backends.cuda.matmul.allow_tf32``); the previous setting is restored after."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


# -- model, tokenizer, data ---------------------------------------------------------------------------


@functools.cache
def parameter_count(shape: LlamaShape) -> int:
    """Exact parameter count (tied embeddings counted once), from a model built on the meta device."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape.config())
    return sum(p.numel() for p in model.parameters())


def estimated_training_bytes(shape: LlamaShape, plan: Plan) -> float:
    """A deliberately generous estimate of the peak of one bf16 DPO step with gradient checkpointing.

    Per parameter 12 bytes: policy weights, gradients and AdamW's two moments (2 + 2 + 4), a transient
    optimiser copy (2), the reference's weights (2). Per token of the ``[2B, T]`` batch: the checkpointed
    input of every layer (2·layers·H), one layer's recomputed activations and their gradients
    (40·H + 8·I), and the logits of policy and reference: bf16 and their fp32 copies, the policy's
    gradients in both (18·V)."""
    tokens = 2 * plan.pairs_per_step * plan.max_length
    per_token = 2 * shape.layers * shape.hidden + 40 * shape.hidden + 8 * shape.ffn + 18 * shape.vocab
    return 12 * parameter_count(shape) + tokens * per_token


@functools.cache
def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose word ``w<i>`` is token id ``i`` (ids 0–3: the special tokens);
    built once per vocabulary size (a few seconds for 128256 words)."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL_TOKENS), vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def draw_lengths(plan: Plan, n_pairs: int) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) lengths in tokens, the responses' end token included; every
    sequence fits ``plan.max_length``."""
    rng = random.Random(SEED)
    lengths = []
    for _ in range(n_pairs):
        prompt = rng.randint(*plan.prompt_tokens)
        longest = min(plan.response_tokens[1], plan.max_length - prompt - 1)
        chosen, rejected = (rng.randint(plan.response_tokens[0], longest) + 1 for _ in range(2))
        lengths.append((prompt, chosen, rejected))
    return lengths


def preference_dataset(lengths: list[tuple[int, int, int]], vocab_size: int) -> Dataset:
    """Random token ids written as words, one row per pair; TRL appends the end token to each response."""
    rng = random.Random(SEED)

    def words(n: int) -> str:
        return " ".join(f"w{rng.randrange(len(SPECIAL_TOKENS), vocab_size)}" for _ in range(n))

    return Dataset.from_list(
        [{"prompt": words(p), "chosen": " " + words(c - 1), "rejected": " " + words(r - 1)} for p, c, r in lengths]
    )


def build_model(shape: LlamaShape, device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    """The random-initialised model, built directly on ``device``: the same weights every call."""
    torch.manual_seed(SEED)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(shape.config(), dtype=dtype)


# -- DPO and GANPO(DPO) in trl.DPOTrainer -------------------------------------------------------------


class StepTimer(TrainerCallback):
    """Seconds of each optimiser step, ``on_step_begin`` → ``on_step_end``, both ends synchronised."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - self._start)


def train_once(
    name: str, round_number: int, shape: LlamaShape, plan: Plan, device: torch.device, data: Dataset, workdir: Path
) -> RunResult:
    """One ``trl.DPOTrainer`` run on fresh models (policy and reference start from the same weights);
    the GANPO run adds the one documented ``attach_regularizer`` call."""
    reference = build_model(shape, device, plan.dtype).eval().requires_grad_(False)
    policy = build_model(shape, device, plan.dtype)
    args = DPOConfig(
        output_dir=str(workdir / f"{round_number}-{name}"),
        per_device_train_batch_size=plan.pairs_per_step,
        max_steps=plan.steps,
        learning_rate=1e-6,
        lr_scheduler_type="constant",
        beta=0.1,
        max_length=plan.max_length,
        bf16=plan.dtype == torch.bfloat16,
        gradient_checkpointing=True,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=SEED,
        use_cpu=device.type == "cpu",
    )
    timer = StepTimer(device)
    trainer = DPOTrainer(
        policy,
        ref_model=reference,
        args=args,
        train_dataset=data,
        processing_class=word_tokenizer(shape.vocab),
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)  # no per-step log dicts on stdout
    if name == GANPO_RUN:
        attach_regularizer(trainer, GANPO_CONFIG)
    free_memory(device)
    reset_peak_memory(device)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return RunResult(name, timer.seconds, peak_memory_mib(device), logs)


def alternate_runs(shape: LlamaShape, plan: Plan, device: torch.device, data: Dataset, log: Report) -> list[RunResult]:
    """DPO, GANPO, DPO, GANPO, ...: ``plan.rounds`` rounds, fresh models every run."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as workdir:
        for round_number in range(1, plan.rounds + 1):
            for name in RUN_NAMES:
                started = time.perf_counter()
                run = train_once(name, round_number, shape, plan, device, data, Path(workdir))
                free_memory(device)
                runs.append(run)
                seconds = time.perf_counter() - started
                log.note(f"round {round_number}, {name}: {len(run.step_seconds)} steps, {seconds:.1f} s in all")
    return runs


def candidate_shapes(plan: Plan, device: torch.device, log: Report) -> list[LlamaShape]:
    """The plan's shapes whose estimated training memory fits in 90 % of the free GPU memory, largest
    first (the smallest alone when none does); on CPU the plan's shapes."""
    if device.type != "cuda":
        return list(plan.shapes)
    free, total = torch.cuda.mem_get_info(device)
    fitting = []
    for shape in plan.shapes:
        need = estimated_training_bytes(shape, plan)
        fits = need <= 0.9 * free
        log.note(
            f"{shape.name}: estimated peak {need / 2**30:.1f} GiB; free {free / 2**30:.1f} of "
            f"{total / 2**30:.1f} GiB: {'fits' if fits else 'does not fit'}"
        )
        if fits:
            fitting.append(shape)
    return fitting or [plan.shapes[-1]]


def flop_bound(shape: LlamaShape, lengths: list[tuple[int, int, int]], disc: Any) -> tuple[float, float, float]:
    """``1 + Σ GANPO(pair) / Σ LM(pair)`` (module docstring), and the mean LM and GANPO FLOPs per pair."""
    model = shape.config().to_dict()
    lm = 5 * sum(n * lm_flops_per_token(model, n) for p, c, r in lengths for n in (p + c, p + r))
    ganpo = 11 * sum(m * disc_flops_per_position(shape.hidden, disc, m) for _, c, r in lengths for m in (c, r))
    return 1 + ganpo / lm, lm / len(lengths), ganpo / len(lengths)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def trl_section(plan: Plan, device: torch.device, log: Report) -> list[RunResult]:
    """The DPO vs GANPO(DPO) table; returns the runs (none when every shape ran out of memory)."""
    log.section("GANPO(DPO) vs plain DPO in trl.DPOTrainer")
    disc = parse_config(GANPO_CONFIG).discriminator
    n_pairs = plan.steps * plan.pairs_per_step  # one epoch: every run sees the same pairs in the same order
    lengths = draw_lengths(plan, n_pairs)
    prompts = [p for p, _, _ in lengths]
    responses = [n for _, c, r in lengths for n in (c, r)]
    log.lines(
        f"- data: {n_pairs} pairs of random token ids, {plan.pairs_per_step} per step; prompts "
        f"{min(prompts)}–{max(prompts)} tokens (mean {statistics.fmean(prompts):.0f}), responses "
        f"{min(responses)}–{max(responses)} (mean {statistics.fmean(responses):.0f}, end token included), longest "
        f"sequence {max(p + max(c, r) for p, c, r in lengths)}",
        f"- {plan.rounds} rounds of (plain DPO, GANPO(DPO)), {plan.steps} steps each, first {plan.warmup} dropped; "
        "step time: on_step_begin → on_step_end of a TrainerCallback, each end after torch.cuda.synchronize() "
        "on a GPU",
        f"- GANPO: attach_regularizer(trainer, {GANPO_CONFIG}): the paper's discriminator (d={disc.d_model}, "
        f"{disc.num_layers} layers, {disc.num_heads} heads, FFN {disc.ffn_size}), fp32",
    )
    runs: list[RunResult] = []
    for shape in candidate_shapes(plan, device, log):
        log.note(
            f"model: random {shape.name} shape (H={shape.hidden}, {shape.layers} layers, {shape.heads} heads / "
            f"{shape.kv_heads} KV heads, FFN {shape.ffn}, vocab {shape.vocab}): {_count(parameter_count(shape))} "
            f"parameters, {str(plan.dtype).removeprefix('torch.')}, gradient checkpointing; policy and reference"
        )
        data = preference_dataset(lengths, shape.vocab)
        try:
            runs = alternate_runs(shape, plan, device, data, log)
        except torch.OutOfMemoryError:
            log.note(f"out of memory with the {shape.name} shape; trying the next smaller one")
        if runs:
            break
        free_memory(device)  # after the except block: the error's frames, and their tensors, are gone
    if not runs:
        log.note("every shape ran out of memory: no table")
        return runs

    bound, lm_per_pair, ganpo_per_pair = flop_bound(shape, lengths, disc)
    kept = {name: [s for r in runs if r.name == name for s in r.step_seconds[plan.warmup :]] for name in RUN_NAMES}
    rounds = {name: [_median(r.step_seconds[plan.warmup :]) for r in runs if r.name == name] for name in RUN_NAMES}
    peaks = {name: _median([r.peak_mib for r in runs if r.name == name]) for name in RUN_NAMES}
    bounds = {RUN_NAMES[0]: 1.0, GANPO_RUN: bound}
    plain = RUN_NAMES[0]
    log.lines(
        "",
        "| run | s/step (median) | per-round medians | time ratio | peak memory MiB | memory ratio | FLOP bound |",
        "|---|---:|---:|---:|---:|---:|---:|",
    )
    for name in RUN_NAMES:
        log.lines(
            f"| {name} | {_median(kept[name]):.3f} | {' / '.join(f'{v:.3f}' for v in rounds[name])} "
            f"| {_median(kept[name]) / _median(kept[plain]):.3f} | {peaks[name]:.0f} "
            f"| {peaks[name] / peaks[plain]:.3f} | {bounds[name]:.4f} |"
        )
    memory = "torch.cuda.max_memory_allocated()" if device.type == "cuda" else "the process's peak RSS (VmHWM)"
    log.lines(
        "",
        f"Peak memory: {memory} over the training steps, reset before each run's train(); median over rounds.",
        f"FLOP bound: per pair, LM training {lm_per_pair:.3g} FLOP, GANPO {ganpo_per_pair:.3g} FLOP: "
        f"1 + {ganpo_per_pair / lm_per_pair:.3g} = {bound:.4f}.",
    )
    return runs


def finite_losses_row(runs: list[RunResult], log: Report) -> bool:
    """Every logged GANPO step has a finite training loss, adversarial term and discriminator losses."""
    steps = [entry for r in runs if r.name == GANPO_RUN for entry in r.logs]
    finite = sum(all(math.isfinite(entry.get(key, math.nan)) for key in LOGGED_LOSSES) for entry in steps)
    passed = bool(steps) and finite == len(steps)
    log.lines(
        f"| bf16 policy and reference latents, fp32 discriminators, in the GANPO runs: {', '.join(LOGGED_LOSSES)} "
        f"finite | {finite} of {len(steps)} steps | all steps | {'pass' if passed else 'FAIL'} |"
    )
    return passed


# -- the regularizer step alone ---------------------------------------------------------------------


def regularizer_step_section(plan: Plan, device: torch.device, log: Report) -> None:
    b, t, h = plan.regularizer_step
    log.section("The regularizer step alone (benchmarks/regularizer_step.py)")
    medians, response = compare_patterns(b, t, h, plan.regularizer_repeats, device)
    free_memory(device)
    log.lines(
        f"B={b} pairs, T={t}, H={h}, fp32 latents, mean response length {response:.0f} tokens; the paper's "
        f"discriminator; median of {plan.regularizer_repeats} alternated repeats after one warm-up.",
        "",
        "| pattern | s/step (median) | speed-up |",
        "|---|---:|---:|",
    )
    for key, label in PATTERNS.items():
        log.lines(f"| {label} | {medians[key]:.4f} | {medians['reference'] / medians[key]:.2f} |")


# -- numerics ---------------------------------------------------------------------------------------


def regularizer_trace(device: torch.device, steps: int = 3) -> tuple[list[dict[str, float]], list[torch.Tensor]]:
    """``steps`` fp32 steps of a small ``GANPORegularizer`` (H=64, 2 pairs of 32 positions, the paper's
    discriminator without dropout, seed 0) on ``device``: each step's metrics and policy-latent gradient."""
    config = parse_config({**GANPO_CONFIG, "discriminator": {"dropout": 0.0}})
    context = RegularizerContext(hidden_size=64, policy_lr=1e-6, total_steps=100, device=device, seed=SEED)
    regularizer = GANPORegularizer(config, context)
    metrics, grads = [], []
    for step in range(steps):
        batch = make_batch(2, 32, 64, seed=step, device=device)
        update_metrics = regularizer.update(batch, StepInfo())
        term = regularizer.policy_term(batch)
        term.loss.backward()
        metrics.append({**update_metrics, **term.metrics})
        grads.append(torch.cat([batch.policy_chosen.grad, batch.policy_rejected.grad]).cpu())
    return metrics, grads


def cross_device_rows(device: torch.device, log: Report) -> bool:
    """The small case on the CPU and on ``device`` (the CPU again without a GPU), TF32 off."""
    with tf32_disabled():
        cpu_metrics, cpu_grads = regularizer_trace(torch.device("cpu"))
        device_metrics, device_grads = regularizer_trace(device)
    differences = {
        key: max(abs(d[key] - c[key]) / abs(c[key]) for c, d in zip(cpu_metrics, device_metrics, strict=True))
        for key in NUMERICS_METRICS
    }
    differences["policy-latent gradient (max abs difference / max abs)"] = max(
        float((d - c).abs().max() / c.abs().max()) for c, d in zip(cpu_grads, device_grads, strict=True)
    )
    pair = "CPU vs GPU" if device.type == "cuda" else "CPU vs CPU (no GPU: exercises the code path only)"
    passed = True
    for key, difference in differences.items():
        ok = difference <= NUMERICS_RTOL
        passed &= ok
        log.lines(
            f"| {pair}, fp32, 3 steps: {key} | {difference:.2e} | {NUMERICS_RTOL:g} | {'pass' if ok else 'FAIL'} |"
        )
    return passed


# -- main -------------------------------------------------------------------------------------------


def environment_lines(device: torch.device) -> list[str]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        where = f"{props.name} ({props.total_memory / 2**30:.1f} GiB), CUDA {torch.version.cuda}"
    else:
        where = f"CPU, {torch.get_num_threads()} torch thread(s)"
    return [
        f"- device: {where}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"trl {trl.__version__}, ganpo-plugins {ganpo_plugins.__version__}, Python {sys.version.split()[0]}",
        f"- run at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the report (markdown) to this file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    # Before the first CUDA allocation: fewer out-of-memory errors from fragmentation near the 8B shape's peak.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plan = GPU_PLAN if device.type == "cuda" else CPU_PLAN
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()

    log = Report(args.out)
    log.lines("# GANPO GPU check (benchmarks/gpu_check.py)", "")
    if device.type != "cuda":
        log.lines(f"**{NO_GPU_NOTICE}**", "")
    log.lines(*environment_lines(device))
    runs = trl_section(plan, device, log)
    regularizer_step_section(plan, device, log)
    log.section("Numerics")
    log.lines("| check | value | tolerance | result |", "|---|---:|---:|---|")
    passed = finite_losses_row(runs, log)
    passed &= cross_device_rows(device, log)
    log.lines("", f"Numerics: {'pass' if passed else 'FAIL'}. Total wall time {time.perf_counter() - started:.0f} s.")
    if device.type != "cuda":
        log.lines("", f"**{NO_GPU_NOTICE}**")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
