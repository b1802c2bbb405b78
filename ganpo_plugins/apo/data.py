"""Data tools for an APO round (arXiv 2311.08045): plain Python, no torch or transformers.

A round's files, one JSON object per line:

- prompts: ``{"prompt": P, ...}``; ``P`` is a string or a list of chat messages
  ``[{"role": "user", "content": ...}, ...]``.
- samples (``ganpo-apo sample``): ``{"prompt": P, "samples": [k strings], ...}``. When the
  policy was prompted through its chat template, ``P`` is stored as messages (a string prompt
  becomes one user message); otherwise it stays a string. Every later step follows that choice.
- scored (``ganpo-apo score``): a samples row plus ``"rewards": [k floats]``.
- pairs (``ganpo-apo pairs``): ``{"prompt", "chosen", "rejected", "is_apo"}``: APO pairs
  (chosen = golden response, rejected = one LLM sample, ``is_apo: true``) and human pairs
  (``is_apo: false``). Chat rounds write TRL's conversational form (prompt = messages, chosen
  and rejected = one assistant message each), text rounds plain strings. TRL's RewardTrainer,
  Axolotl (``type: ganpo_axolotl.apo``) and OpenRLHF's ``train_rm`` (``--data.apply_chat_template``
  for chat rows) read both.
- SFT (``ganpo-apo select``): the best non-empty sample per prompt, as ``{"messages": [...]}``
  or ``{"prompt", "completion"}`` (see :func:`sft_rows`).

Every check raises :class:`APODataError` naming the source, the row (1-based, = line number) and
the field.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "APODataError",
    "SFTFormat",
    "apo_pairs",
    "best_responses",
    "check_prompt",
    "check_sample_rows",
    "golden_responses",
    "human_pairs",
    "is_chat",
    "prompt_key",
    "prompt_messages",
    "read_jsonl",
    "repair_jsonl_tail",
    "sft_rows",
    "single_response",
    "unique_prompt_rows",
    "write_jsonl",
]

Message = dict[str, str]
Prompt = str | list[Message]
SFTFormat = Literal["messages", "prompt-completion"]


class APODataError(ValueError):
    """Bad APO input; the message names the source, the row and the field, and says how to fix it."""


def _where(source: str, index: int) -> str:
    return f"{source} row {index + 1}"


def _short(value: Any, limit: int = 60) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and value[0].get("role") == "user":
        value = value[0].get("content")  # a one-message prompt reads as its text
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


# ----------------------------------------------------------------------------- jsonl files


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a jsonl file; row ``i`` is line ``i``. A trailing newline is fine, an empty line
    inside the file or a line that is not a JSON object is an error naming the line."""
    path = Path(path)
    if not path.is_file():
        raise APODataError(f"{path}: no such file")
    rows = []
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise APODataError(f"{path} line {number}: empty line; jsonl needs one JSON object per line")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise APODataError(f"{path} line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise APODataError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Write ``rows`` to ``path`` atomically (a temporary file renamed over it): a killed run
    leaves either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def repair_jsonl_tail(path: str | os.PathLike[str]) -> bool:
    """Cut a partly written last line (a run killed mid-write leaves one without its newline).
    Returns whether something was cut. Complete lines are never touched."""
    path = Path(path)
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return False
        f.truncate(data.rfind(b"\n") + 1)
    return True


# ----------------------------------------------------------------------------- prompts


def check_prompt(value: Any, where: str, field: str = "prompt") -> Prompt:
    """``value`` if it is a non-empty string or a non-empty list of ``{"role", "content"}`` string
    messages; otherwise an error naming ``where`` and ``field``."""
    if isinstance(value, str):
        if not value.strip():
            raise APODataError(f"{where}: field {field!r} is empty")
        return value
    if isinstance(value, list) and value:
        for j, message in enumerate(value):
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise APODataError(
                    f"{where}: field {field!r} message {j} must be {{'role': str, 'content': str}}, "
                    f"got {_short(message)}"
                )
        return value
    if value is None:
        raise APODataError(f"{where}: missing field {field!r}")
    raise APODataError(
        f"{where}: field {field!r} must be a non-empty string or a list of chat messages, got {_short(value)}"
    )


def is_chat(prompt: Prompt) -> bool:
    """Whether the prompt is a list of chat messages (the round then runs through chat templates)."""
    return isinstance(prompt, list)


def prompt_messages(prompt: Prompt) -> list[Message]:
    """The prompt as chat messages: a string becomes one user message."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_key(prompt: Prompt) -> str:
    """Identity of a prompt across files: a string and the same text as one user message match."""
    messages = [{"role": m["role"], "content": m["content"]} for m in prompt_messages(prompt)]
    return json.dumps(messages, ensure_ascii=False, sort_keys=True)


def unique_prompt_rows(
    rows: Sequence[Mapping[str, Any]], source: str, field: str = "prompt", dedupe: bool = False
) -> list[dict[str, Any]]:
    """Rows with a valid ``field``, each prompt once. A repeated prompt is an error naming both rows,
    unless ``dedupe`` (then the first row of each prompt is kept)."""
    first: dict[str, int] = {}
    kept = []
    for i, row in enumerate(rows):
        key = prompt_key(check_prompt(row.get(field), _where(source, i), field))
        if key in first:
            if dedupe:
                continue
            raise APODataError(
                f"{_where(source, i)}: field {field!r} repeats the prompt of row {first[key] + 1} "
                f"({_short(row[field])}); remove the duplicate or pass --dedupe to keep the first"
            )
        first[key] = i
        kept.append(dict(row))
    return kept


# ----------------------------------------------------------------------------- samples and pairs


def check_sample_rows(rows: Sequence[Mapping[str, Any]], source: str, k: int | None = None) -> int:
    """Check sample rows (``prompt``, ``samples``: ``k`` strings; one row per prompt; all prompts
    chat or all text) and return ``k`` (inferred from the first row when not given)."""
    if not rows:
        raise APODataError(f"{source}: no rows")
    if k is not None and k < 1:
        raise APODataError(f"k must be >= 1 (got {k})")
    unique_prompt_rows(rows, source)
    chat = is_chat(rows[0]["prompt"])
    for i, row in enumerate(rows):
        where = _where(source, i)
        if is_chat(row["prompt"]) != chat:
            raise APODataError(
                f"{where}: field 'prompt' is {'chat messages' if not chat else 'a string'} but row 1's is "
                f"{'chat messages' if chat else 'a string'}; one round uses one prompt format"
            )
        samples = row.get("samples")
        if not isinstance(samples, list) or not all(isinstance(s, str) for s in samples):
            raise APODataError(f"{where}: field 'samples' must be a list of strings, got {_short(samples)}")
        if k is None:
            k = len(samples)
            if k == 0:
                raise APODataError(f"{where}: field 'samples' is empty")
        if len(samples) != k:
            raise APODataError(
                f"{where}: field 'samples' has {len(samples)} responses, expected k={k} "
                "(every prompt needs the same number of samples; pass --k to state it)"
            )
    return k


def golden_responses(rows: Sequence[Mapping[str, Any]], source: str, field: str = "golden") -> dict[str, str]:
    """Map prompt key → golden response from rows with ``prompt`` and ``field``. A prompt may repeat
    only with the same golden response."""
    golden: dict[str, tuple[int, str]] = {}
    for i, row in enumerate(rows):
        where = _where(source, i)
        key = prompt_key(check_prompt(row.get("prompt"), where))
        response = row.get(field)
        if response is None:
            raise APODataError(f"{where}: missing golden field {field!r} (choose the field with --golden-field)")
        if not isinstance(response, str) or not response.strip():
            raise APODataError(f"{where}: golden field {field!r} must be a non-empty string, got {_short(response)}")
        if key in golden and golden[key][1] != response:
            raise APODataError(
                f"{where}: prompt {_short(row['prompt'])} already has a different golden response in row "
                f"{golden[key][0] + 1}; keep one golden response per prompt"
            )
        golden.setdefault(key, (i, response))
    return {key: response for key, (_, response) in golden.items()}


def _pair(prompt: Prompt, chosen: str, rejected: str, is_apo: bool, chat: bool) -> dict[str, Any]:
    if chat:
        return {
            "prompt": prompt_messages(prompt),
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "is_apo": is_apo,
        }
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "is_apo": is_apo}


def apo_pairs(
    sample_rows: Sequence[Mapping[str, Any]],
    golden: Mapping[str, str],
    source: str,
    k: int | None = None,
    golden_source: str = "golden",
) -> list[dict[str, Any]]:
    """APO pairs: for every prompt and each of its ``k`` samples, ``{"prompt", "chosen": golden,
    "rejected": sample, "is_apo": True}`` (golden preferred). Empty samples stay: "golden beats an
    empty answer" is a true comparison and dropping them would bias the expectation over the
    LLM's samples."""
    check_sample_rows(sample_rows, source, k)
    pairs = []
    for i, row in enumerate(sample_rows):
        key = prompt_key(row["prompt"])
        if key not in golden:
            raise APODataError(
                f"{_where(source, i)}: no golden response for prompt {_short(row['prompt'])} in {golden_source}; "
                "every sampled prompt needs one"
            )
        chat = is_chat(row["prompt"])
        pairs += [_pair(row["prompt"], golden[key], sample, True, chat) for sample in row["samples"]]
    return pairs


def single_response(value: Any, where: str, field: str) -> str:
    """A response given as a non-empty string or as one assistant message."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        if value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str):
            value = value[0]["content"]
    if not isinstance(value, str):
        raise APODataError(f"{where}: field {field!r} must be a string or one assistant message, got {_short(value)}")
    if not value.strip():
        raise APODataError(f"{where}: field {field!r} is empty")
    return value


def human_pairs(rows: Sequence[Mapping[str, Any]], source: str, chat: bool) -> list[dict[str, Any]]:
    """Human preference pairs ``{"prompt", "chosen", "rejected"}`` in the round's format
    (``chat``: conversational, else strings), with ``is_apo: False``. Prompts may repeat."""
    pairs = []
    for i, row in enumerate(rows):
        where = _where(source, i)
        prompt = check_prompt(row.get("prompt"), where)
        if is_chat(prompt) and not chat:
            raise APODataError(
                f"{where}: field 'prompt' is chat messages but the samples are text prompts; a text round "
                "needs string prompts (sample with --format chat to run the round through chat templates)"
            )
        chosen = single_response(row.get("chosen"), where, "chosen")
        rejected = single_response(row.get("rejected"), where, "rejected")
        pairs.append(_pair(prompt, chosen, rejected, False, chat))
    return pairs


# ----------------------------------------------------------------------------- rejection sampling


def best_responses(rows: Sequence[Mapping[str, Any]], source: str) -> tuple[list[tuple[Prompt, str, float]], int]:
    """Rejection sampling: per scored row, the non-empty sample with the highest reward (the first on
    ties). Returns ``(prompt, response, reward)`` triples and the number of prompts skipped because
    every sample was empty."""
    k = check_sample_rows(rows, source)
    best = []
    skipped = 0
    for i, row in enumerate(rows):
        where = _where(source, i)
        rewards = row.get("rewards")
        if not isinstance(rewards, list) or len(rewards) != k:
            raise APODataError(
                f"{where}: field 'rewards' must be a list of {k} numbers (one per sample), got {_short(rewards)}"
            )
        for j, r in enumerate(rewards):
            if isinstance(r, bool) or not isinstance(r, int | float) or not math.isfinite(r):
                raise APODataError(f"{where}: field 'rewards' entry {j} must be a finite number, got {r!r}")
        candidates = [j for j, s in enumerate(row["samples"]) if s.strip()]
        if not candidates:
            skipped += 1
            continue
        j = max(candidates, key=lambda j: rewards[j])
        best.append((row["prompt"], row["samples"][j], float(rewards[j])))
    return best, skipped


def sft_rows(best: Sequence[tuple[Prompt, str, float]], fmt: SFTFormat = "messages") -> list[dict[str, Any]]:
    """SFT rows for the hosts' own fine-tuning.

    - ``messages``: ``{"messages": prompt + [assistant]}``, chat rounds only. Read by Axolotl
      (``type: chat_template``; trains on assistant turns), OpenRLHF ``train_sft``
      (``--data.input_key messages --data.apply_chat_template``) and TRL's SFTTrainer (every token
      unless ``assistant_only_loss``).
    - ``prompt-completion``: ``{"prompt", "completion"}``: conversational (messages) in chat rounds,
      strings in text rounds. Read by TRL's SFTTrainer (loss on the completion only) and OpenRLHF
      ``train_sft`` (``--data.input_key prompt --data.output_key completion``, plus
      ``--data.apply_chat_template`` in chat rounds).
    """
    rows = []
    for prompt, response, _ in best:
        if fmt == "messages":
            if not is_chat(prompt):
                raise APODataError(
                    "--format messages needs a chat round, but these samples were drawn from text prompts "
                    "(no chat template): use --format prompt-completion"
                )
            rows.append({"messages": [*prompt_messages(prompt), {"role": "assistant", "content": response}]})
        elif fmt == "prompt-completion":
            if is_chat(prompt):
                rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": response}]})
            else:
                rows.append({"prompt": prompt, "completion": response})
        else:
            raise APODataError(f"unknown SFT format {fmt!r}; choose messages or prompt-completion")
    return rows
