"""The stages of the toy experiment: SFT, sampling, pair labelling, preference training, evaluation.

Preference training runs the real TRL 1.9.0 trainers (``trl.DPOTrainer``; SimPO through
``trl.experimental.cpo.CPOTrainer`` with ``loss_type="simpo"``, ``cpo_alpha=0``); GANPO attaches to the
built trainer with ``ganpo_trl.attach_regularizer``. Everything runs on CPU.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch import Tensor
from toy_task import EOS, build_tokenizer, demonstration, make_prompt, oracle_reward, target

from ganpo_plugins.tools.score import SavedDiscriminators, pearson, score_hidden_states


@dataclass(frozen=True)
class Sizes:
    """Every size of the experiment; ``FULL`` and ``TINY`` below."""

    hidden: int
    layers: int
    sft_steps: int
    sft_batch: int
    sft_lr: float
    noise: float
    pair_prompts: int
    samples_per_prompt: int
    min_gap: float
    epochs: int
    batch: int
    dpo_lr: float
    simpo_lr: float
    eval_prompts: int
    eval_samples: int
    seeds: tuple[int, ...]
    disc_d_model: int
    disc_layers: int
    ganpo_weight: float = 1.0  # λ; the paper's value


FULL = Sizes(
    hidden=96,
    layers=3,
    sft_steps=600,
    sft_batch=64,
    sft_lr=3e-3,
    noise=0.6,
    pair_prompts=768,
    samples_per_prompt=4,
    min_gap=0.1,
    epochs=3,
    batch=16,
    dpo_lr=1e-3,
    simpo_lr=5e-4,
    eval_prompts=512,
    eval_samples=2,
    seeds=(0, 1, 2, 3, 4),
    disc_d_model=64,
    disc_layers=1,
)
TINY = Sizes(
    hidden=32,
    layers=1,
    sft_steps=60,
    sft_batch=32,
    sft_lr=3e-3,
    noise=0.6,
    pair_prompts=48,
    samples_per_prompt=4,
    min_gap=0.1,
    epochs=1,
    batch=8,
    dpo_lr=1e-3,
    simpo_lr=5e-4,
    eval_prompts=24,
    eval_samples=1,
    seeds=(0,),
    disc_d_model=16,
    disc_layers=1,
)

MAX_NEW_TOKENS = 12  # the longest ideal response is 8 letters + end token


def build_model(vocab_size: int, hidden: int, layers: int, seed: int, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def _right_padded(
    tokenizer, prompts: list[str], responses: list[str], ended: list[bool] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``input_ids, attention_mask, response_mask`` for prompt + response (+ end token where ``ended``,
    default all), right-padded."""
    rows, resp = [], []
    ended = ended or [True] * len(prompts)
    for p, r, e in zip(prompts, responses, ended, strict=True):
        p_ids = tokenizer(p)["input_ids"]
        r_ids = tokenizer(r + (EOS if e else ""))["input_ids"]
        rows.append(p_ids + r_ids)
        resp.append([0] * len(p_ids) + [1] * len(r_ids))
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    attn = torch.zeros((len(rows), length), dtype=torch.bool)
    rmask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, (row, m) in enumerate(zip(rows, resp, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        attn[i, : len(row)] = True
        rmask[i, : len(row)] = torch.tensor(m, dtype=torch.bool)
    return ids, attn, rmask


def sft(sizes: Sizes, seed: int = 0, log=print):
    """Train the policy from scratch on noisy demonstrations (plain PyTorch loop, response tokens only)."""
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), sizes.hidden, sizes.layers, seed, tokenizer)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=sizes.sft_lr, weight_decay=0.01)
    warmup = max(1, sizes.sft_steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, sizes.sft_steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    for step in range(sizes.sft_steps):
        prompts = [make_prompt(rng) for _ in range(sizes.sft_batch)]
        demos = [demonstration(p, sizes.noise, rng) for p in prompts]
        ids, attn, rmask = _right_padded(tokenizer, prompts, demos)
        labels = ids.masked_fill(~rmask, -100)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % max(1, sizes.sft_steps // 10) == 0 or step == sizes.sft_steps - 1:
            log(f"  sft step {step:5d}  loss {loss.item():.4f}")
    model.eval()
    return model, tokenizer


@torch.no_grad()
def sample(
    model, tokenizer, prompts: list[str], temperature: float, seed: int, batch: int = 256
) -> tuple[list[str], list[bool]]:
    """One sampled response per prompt: its text before the end token (an unterminated sample keeps
    all ``MAX_NEW_TOKENS`` tokens) and whether it ended. Pure ancestral sampling: no top-k, no top-p."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out: list[str] = []
    ended: list[bool] = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        enc = tokenizer(chunk, return_tensors="pt", padding=True)  # left padding
        ids, attn = enc["input_ids"], enc["attention_mask"]
        positions = (attn.cumsum(1) - 1).clamp_min(0)
        done = torch.zeros(len(chunk), dtype=torch.bool)
        new = torch.full((len(chunk), MAX_NEW_TOKENS), -1)  # -1: after the end token
        past = None
        step_ids, step_pos = ids, positions
        for t in range(MAX_NEW_TOKENS):
            res = model(
                input_ids=step_ids, attention_mask=attn, position_ids=step_pos, past_key_values=past, use_cache=True
            )
            past = res.past_key_values
            logits = res.logits[:, -1].float() / temperature
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1)
            new[:, t] = torch.where(done, -1, nxt)
            done |= nxt == tokenizer.eos_token_id
            if bool(done.all()):
                break
            step_ids = nxt.unsqueeze(1)
            step_pos = step_pos[:, -1:] + 1
            attn = torch.cat([attn, torch.ones(len(chunk), 1, dtype=attn.dtype)], 1)
        for row in new.tolist():
            kept = [tok_id for tok_id in row if tok_id >= 0]
            ended.append(bool(kept) and kept[-1] == tokenizer.eos_token_id)
            if ended[-1]:
                kept = kept[:-1]
            out.append(tokenizer.decode(kept))  # specials stay literal, so the text re-tokenizes to these ids
    return out, ended


def label_pairs(model, tokenizer, sizes: Sizes, seed: int = 0) -> list[dict[str, str]]:
    """Preference pairs from the SFT model: ``samples_per_prompt`` samples at temperature 1 per prompt,
    the oracle's best as chosen and its worst as rejected; pairs closer than ``min_gap`` are dropped."""
    rng = random.Random(10_000 + seed)
    prompts = [make_prompt(rng) for _ in range(sizes.pair_prompts)]
    k = sizes.samples_per_prompt
    texts, _ = sample(model, tokenizer, [p for p in prompts for _ in range(k)], 1.0, seed=10_000 + seed)
    rows = []
    for i, prompt in enumerate(prompts):
        cands = sorted(texts[i * k : (i + 1) * k], key=lambda r: oracle_reward(prompt, r))
        worst, best = cands[0], cands[-1]
        if oracle_reward(prompt, best) - oracle_reward(prompt, worst) >= sizes.min_gap:
            rows.append({"prompt": prompt, "chosen": best, "rejected": worst})
    return rows


# Preference-training hyper-parameters shared by the plain and the GANPO arm of each method.
DPO_BETA = 0.1
SIMPO_BETA, SIMPO_GAMMA = 2.0, 1.0


def shared_trainer_args(work, seed: int) -> dict:
    """The trainer settings every arm of the toy studies shares, offline and online: CPU, fp32,
    cosine schedule with 10 % warm-up, no checkpoints, quiet, seeded."""
    return dict(
        output_dir=str(work),
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=seed,
        data_seed=seed,
        max_length=32,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def train_preference(method: str, ganpo: bool, sft_dir, pairs: list[dict[str, str]], sizes: Sizes, seed: int, work):
    """Train one arm with the real TRL trainer; returns ``(policy, trainer, attachment)``.

    ``method`` is ``dpo`` or ``simpo``; with ``ganpo`` the regularizer attaches to the built trainer
    through the project's TRL adapter (``ganpo_trl.attach_regularizer``), with the SFT model as the
    reference whose hidden states it compares against (SimPO runs no reference forward of its own).
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, PrinterCallback

    tokenizer = PreTrainedTokenizerFast.from_pretrained(sft_dir)
    policy = AutoModelForCausalLM.from_pretrained(sft_dir)
    ref = AutoModelForCausalLM.from_pretrained(sft_dir).eval()  # DPO's reference; GANPO's h_r under SimPO
    data = Dataset.from_list(pairs)
    common = dict(
        **shared_trainer_args(work, seed),
        per_device_train_batch_size=sizes.batch,
        num_train_epochs=sizes.epochs,
        gradient_checkpointing=False,
    )
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(beta=DPO_BETA, learning_rate=sizes.dpo_lr, **common)
        trainer = DPOTrainer(policy, ref, args=args, train_dataset=data, processing_class=tokenizer)
    elif method == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(
            loss_type="simpo",
            cpo_alpha=0.0,
            beta=SIMPO_BETA,
            simpo_gamma=SIMPO_GAMMA,
            learning_rate=sizes.simpo_lr,
            remove_unused_columns=False,
            **common,
        )
        trainer = CPOTrainer(policy, args=args, train_dataset=data, processing_class=tokenizer)
    else:
        raise ValueError(f"method must be dpo or simpo, got {method!r}")
    trainer.remove_callback(PrinterCallback)  # the per-step log dicts stay in trainer.state.log_history
    attachment = None
    if ganpo:
        from ganpo_trl import attach_regularizer

        # SimPO runs no reference forward: the adapter runs one on ``ref``; DPO's trainer runs its own.
        own_ref = ref if method == "simpo" else None
        attachment = attach_regularizer(trainer, ganpo_config(sizes, seed), ref_model=own_ref)
    trainer.train()
    policy.eval()
    return policy, trainer, attachment


def ganpo_config(sizes: Sizes, seed: int) -> dict:
    """The regularizer for the toy: λ = ``ganpo_weight`` (the paper's 1 by default) and the paper's
    Transformer discriminator, shrunk to the toy
    (width ``disc_d_model``, ``disc_layers`` encoder layers, 4 heads, FFN 2× width, 32 positions)."""
    return {
        "weight": sizes.ganpo_weight,
        "seed": seed,
        "max_positions": 32,
        "discriminator": {
            "kind": "transformer",
            "d_model": sizes.disc_d_model,
            "num_layers": sizes.disc_layers,
            "num_heads": 4,
            "ffn_size": 2 * sizes.disc_d_model,
            "dropout": 0.1,
        },
    }


def _discriminators(attachment):
    """D+ and D− (a ``ModuleDict`` with ``pos``/``neg``) of a trained GANPO attachment."""
    return attachment.runner.regularizer.discriminators


def _response_stats(model, ids: Tensor, attn: Tensor, rmask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per sequence: summed log-probability of the response tokens, summed entropy (nats) of the
    next-token distributions that predicted them; and the last-layer (final-norm) hidden states."""
    out = model(input_ids=ids, attention_mask=attn, output_hidden_states=True)
    logprobs = torch.log_softmax(out.logits[:, :-1].float(), -1)
    token_logps = logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    mask = rmask[:, 1:]
    return (token_logps * mask).sum(1), (entropy * mask).sum(1), out.hidden_states[-1]


TEMPERATURES = (0.5, 1.0, 1.5)


@torch.no_grad()
def evaluate(policy, ref, tokenizer, sizes: Sizes, seed: int, method: str | None, attachment=None) -> dict:
    """Oracle reward of samples at each temperature (and the policy's entropy and the length excess
    along them); at the highest temperature also the Pearson r of the oracle with (a) the trained D+
    (and D−) scores of the policy's hidden states on its own samples, (b) the method's implicit reward
    (DPO: log π/π_ref; SimPO: mean log π per token) and (c) the policy's confidence (mean log π per
    token, for every arm: the score one gets for free).

    The prompts are the same for every run; the sampling seed depends on ``seed`` only, so the plain and
    the GANPO arm of a seed are scored on the same random draws.
    """
    rng = random.Random(20_000)
    prompts = [make_prompt(rng) for _ in range(sizes.eval_prompts)] * sizes.eval_samples
    result: dict = {}
    for i, temp in enumerate(TEMPERATURES):
        texts, ended = sample(policy, tokenizer, prompts, temp, seed=30_000 + 10 * seed + i)
        rewards = [oracle_reward(p, t) for p, t in zip(prompts, texts, strict=True)]
        ids, attn, rmask = _right_padded(tokenizer, prompts, texts, ended)
        logp, entropy, hidden = _response_stats(policy, ids, attn, rmask)
        n_tokens = rmask.sum(1)  # response tokens, end token included where the sample ended
        lengths = n_tokens - torch.tensor(ended, dtype=n_tokens.dtype)
        result[f"reward@{temp}"] = sum(rewards) / len(rewards)
        result[f"perfect@{temp}"] = sum(r == 1.0 for r in rewards) / len(rewards)
        result[f"ended@{temp}"] = sum(ended) / len(ended)
        result[f"entropy@{temp}"] = float(entropy.sum() / n_tokens.sum())
        goal = torch.tensor([len(target(p)) for p in prompts])
        result[f"len_excess@{temp}"] = float((lengths - goal).float().mean())
    # The variables now hold the highest temperature's samples: score them.
    confidence = logp / n_tokens
    result["r_confidence"] = pearson(confidence, rewards)
    result["scatter"] = {"oracle": rewards, "confidence": confidence.tolist(), "length": lengths.tolist()}
    result["scatter"]["ended"] = [float(e) for e in ended]
    if method is not None:
        logp_ref, _, _ = _response_stats(ref, ids, attn, rmask)
        implicit = logp - logp_ref if method == "dpo" else confidence
        result["r_implicit"] = pearson(implicit, rewards)
        result["scatter"]["implicit"] = implicit.tolist()
    if attachment is not None:
        # The same scoring `python -m ganpo_plugins.score` runs on a saved run, here on the live one.
        saved = SavedDiscriminators(_discriminators(attachment), attachment.runner.config)
        was_training = saved.discriminators.training
        saved.discriminators.eval()
        for key, scores in score_hidden_states(saved, hidden, rmask & attn).items():
            result[f"r_{key}"] = pearson(scores, rewards)
            result["scatter"][key] = scores
        saved.discriminators.train(was_training)
    return result
