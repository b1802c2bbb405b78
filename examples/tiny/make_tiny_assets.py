"""Build a tiny random Llama, its tokenizer and a small preference dataset, all offline.

    python examples/tiny/make_tiny_assets.py --out outputs/tiny

writes ``OUT/model`` (safetensors + tokenizer with a ChatML template) and
``OUT/prefs.jsonl`` (``prompt``/``chosen``/``rejected`` rows). The model is random: it exists
so that hosts run their real training loops on CPU in seconds, not to learn anything.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORDS = "red green blue cyan amber black white gold pink gray lime teal navy plum rose sand".split()
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]


def preference_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Pairs for 'repeat these words': the chosen answer repeats them, the rejected one scrambles
    and truncates them. Response lengths vary, so padding and masks matter."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.choices(WORDS, k=rng.randint(2, 6))
        wrong = rng.sample(words, len(words))[: rng.randint(1, len(words))] + rng.choices(WORDS, k=rng.randint(0, 3))
        rows.append({"prompt": "Repeat: " + " ".join(words), "chosen": " ".join(words), "rejected": " ".join(wrong)})
    return rows


def build_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.chat_template = CHATML
    return fast


def build_model(vocab_size: int, hidden_size: int, layers: int, seed: int, pad_token_id: int, eos_token_id: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=pad_token_id,
        bos_token_id=1,
        eos_token_id=eos_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def make_assets(out: str | Path, n_pairs: int = 64, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write the model, tokenizer and dataset under ``out``; returns ``out``. Idempotent."""
    out = Path(out)
    if (out / "model" / "config.json").exists() and (out / "prefs.jsonl").exists():
        return out
    rows = preference_rows(n_pairs, seed)
    texts = [r[k] for r in rows for k in ("prompt", "chosen", "rejected")] + ["user assistant system Repeat:"]
    tokenizer = build_tokenizer(texts)
    model = build_model(len(tokenizer), hidden_size, layers, seed, tokenizer.pad_token_id, tokenizer.eos_token_id)
    (out / "model").mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    with open(out / "prefs.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/tiny")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_assets(args.out, args.pairs, args.hidden_size, args.layers, args.seed))


if __name__ == "__main__":
    main()
