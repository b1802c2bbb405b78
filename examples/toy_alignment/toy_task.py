"""The synthetic task: sort the prompt's letters. Oracle reward, data, noisy demonstrations, tokenizer.

A prompt is ``<s>`` + 4–8 random letters from ``a``–``h`` + ``=``; the ideal response is the same
letters in sorted order, then the end token. The oracle scores any response string in [0, 1]:

    reward(prompt, response) = 1 − Levenshtein(response, sorted(letters)) / max(len(response), len(target))

so 1 is a perfect sort, a swapped pair or a missing letter costs a little, an unterminated ramble
costs a lot. Demonstrations are the ideal response corrupted with probability ``noise`` by 1–3 random
edits (swap, drop, insert, substitute), so the supervised model learns a noisy behaviour that
preference training can improve on.
"""

from __future__ import annotations

import random

ALPHABET = "abcdefgh"
SEP = "="
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
MIN_LETTERS, MAX_LETTERS = 4, 8


def make_prompt(rng: random.Random) -> str:
    letters = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(MIN_LETTERS, MAX_LETTERS)))
    return BOS + letters + SEP


def letters_of(prompt: str) -> str:
    return prompt.removeprefix(BOS).removesuffix(SEP)


def target(prompt: str) -> str:
    return "".join(sorted(letters_of(prompt)))


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def oracle_reward(prompt: str, response: str) -> float:
    """Edit similarity of ``response`` (text before the end token) to the sorted letters, in [0, 1]."""
    goal = target(prompt)
    response = response.replace(BOS, "?").replace(PAD, "?")  # a stray special token is one wrong character
    longest = max(len(goal), len(response))
    return 1.0 - levenshtein(response, goal) / longest


def corrupt(text: str, rng: random.Random) -> str:
    """One random edit: swap two neighbours, drop, insert or substitute a letter."""
    chars = list(text)
    op = rng.choice(("swap", "drop", "insert", "substitute"))
    i = rng.randrange(len(chars)) if chars else 0
    if op == "swap" and len(chars) > 1:
        i = min(i, len(chars) - 2)
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    elif op == "drop" and len(chars) > 1:
        del chars[i]
    elif op == "substitute" and chars:
        chars[i] = rng.choice(ALPHABET)
    else:
        chars.insert(rng.randint(0, len(chars)), rng.choice(ALPHABET))
    return "".join(chars)


def demonstration(prompt: str, noise: float, rng: random.Random) -> str:
    """A noisy demonstration: the sorted letters, corrupted by 1–3 edits with probability ``noise``."""
    text = target(prompt)
    if rng.random() < noise:
        for _ in range(rng.choice((1, 1, 2, 3))):
            text = corrupt(text, rng)
    return text


def build_tokenizer():
    """A character-level tokenizer (one token per letter or separator), built offline.

    ``tokenizer(prompt)`` adds no special tokens: prompts carry their ``<s>`` in the text, so every
    trainer (TRL DPO, CPO) and our own loops see exactly the same ids.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS]
    vocab = {tok: i for i, tok in enumerate([*specials, *ALPHABET, SEP])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    fast.padding_side = "left"  # generation pads prompts on the left
    return fast
