"""The transformers side of the round driver: draw samples from a causal LM, read rewards from a
sequence-classification reward model. Imported only by ``ganpo-apo sample`` / ``score``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerBase,
)

from .data import APODataError, Prompt, prompt_messages

__all__ = [
    "generate_samples",
    "load_policy",
    "load_reward_model",
    "load_tokenizer",
    "openrlhf_reward_input_ids",
    "reward_input_ids",
    "score_responses",
]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_tokenizer(path: str, padding_side: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:  # same fallback as TRL's trainers
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(path: str, device: torch.device, dtype: torch.dtype) -> Any:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    return model.eval()


def load_reward_model(path: str, tokenizer: PreTrainedTokenizerBase, device: torch.device, dtype: torch.dtype) -> Any:
    """An ``AutoModelForSequenceClassification`` reward model with one output. Refuses checkpoints
    whose score head would be freshly initialised (e.g. a plain causal LM): their rewards are noise."""
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=dtype, output_loading_info=True
    )
    missing = [k for k in info["missing_keys"] if "score" in k or "classifier" in k]
    if missing:
        raise APODataError(
            f"--reward-model {path}: the checkpoint has no reward head ({', '.join(missing)} would be random); "
            "train it first (python -m ganpo_trl.reward) or pass a sequence-classification reward model"
        )
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    return model.to(device).eval()


def _chat_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], **kwargs: Any) -> Any:
    if not (kwargs.get("chat_template") or tokenizer.chat_template):
        raise APODataError(
            f"{tokenizer.name_or_path}: the tokenizer has no chat template, but the prompts are chat messages; "
            "give the tokenizer a chat_template or run the round with string prompts (--format text)"
        )
    return tokenizer.apply_chat_template(messages, **kwargs)


@torch.no_grad()
def generate_samples(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
) -> list[list[str]]:
    """``k`` samples per prompt in one batched ``generate`` call (left padding). Chat prompts go
    through the tokenizer's chat template with the assistant turn opened; string prompts are
    continued as they are.

    Only these sampling settings apply: the checkpoint's own ``generation_config`` defaults
    (top-k, repetition penalty, ...) are not inherited, so samples follow the paper's settings
    (temperature 1.2, top-p 1.0, no top-k)."""
    if all(isinstance(p, list) for p in prompts):
        texts = [_chat_text(tokenizer, prompt_messages(p), tokenize=False, add_generation_prompt=True) for p in prompts]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    else:
        batch = tokenizer(list(prompts), return_tensors="pt", padding=True)
    batch = batch.to(model.device)
    config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        max_new_tokens=max_new_tokens,
        num_return_sequences=k,
        eos_token_id=model.generation_config.eos_token_id or tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)  # also seeds CUDA
    out = model.generate(**batch, generation_config=config)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return [texts[i * k : (i + 1) * k] for i in range(len(prompts))]  # generate groups the k samples per prompt


def reward_input_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: Prompt, response: str, chat_template: str | None = None
) -> list[int]:
    """Token ids of prompt + response exactly as TRL's RewardTrainer builds them for training (and
    ``ganpo_axolotl.apo`` for Axolotl), so the reward is read where the model learned to put it:
    chat rows through the chat template (``chat_template`` overrides the tokenizer's), text rows as
    ``prompt + response + eos``."""
    if isinstance(prompt, list):
        messages = [*prompt_messages(prompt), {"role": "assistant", "content": response}]
        kwargs = {} if chat_template is None else {"chat_template": chat_template}
        return list(_chat_text(tokenizer, messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])
    text = prompt + response
    if not text.endswith(tokenizer.eos_token):
        text += tokenizer.eos_token
    return list(tokenizer(text)["input_ids"])


def openrlhf_reward_input_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: Prompt, response: str, input_template: str | None = None
) -> list[int]:
    """Token ids of prompt + response as OpenRLHF 0.11's ``train_rm`` builds them (its
    ``RewardDataset``), whose reward model reads its reward at an EOS appended after the text:
    chat rows through the chat template (``--data.apply_chat_template``), text rows as
    ``input_template.format(prompt) + response`` (``--data.input_template``); then trailing
    newlines stripped, ``" " + eos`` appended unless the text already ends with it, and no other
    special tokens added. OpenRLHF's truncation to ``--data.max_len`` is not applied."""
    if isinstance(prompt, list):
        # OpenRLHF joins the rendered prompt and the tail of the rendered conversation past its length
        messages = prompt_messages(prompt)
        head = _chat_text(tokenizer, messages, tokenize=False, add_generation_prompt=True)
        conversation = [*messages, {"role": "assistant", "content": response}]
        text = head + _chat_text(tokenizer, conversation, tokenize=False)[len(head) :]
    else:
        text = (input_template.format(prompt) if input_template else prompt) + response
    text = text.rstrip("\n")
    if not text.endswith(tokenizer.eos_token):
        text += " " + tokenizer.eos_token
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


TokenIds = Callable[[PreTrainedTokenizerBase, Prompt, str], list[int]]


@torch.no_grad()
def score_responses(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[tuple[Prompt, str]],
    batch_size: int,
    token_ids: TokenIds = reward_input_ids,
) -> list[float]:
    """Reward of each (prompt, response), tokenized by ``token_ids`` as the reward model's trainer
    did: the model's output at the last token (its head reads the rightmost non-pad token;
    batches are right-padded and grouped by length)."""
    ids = [token_ids(tokenizer, p, r) for p, r in items]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    rewards = [0.0] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(ids[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
            attention_mask[row, : len(ids[i])] = 1
        logits = model(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device)).logits
        for row, i in enumerate(chunk):
            rewards[i] = float(logits[row, 0].float())
    return rewards
