"""``python -m ganpo_plugins.score``: score (prompt, response) rows with a GANPO run's discriminators.

    python -m ganpo_plugins.score --state RUN/ganpo_regularizer.pt --model RUN \\
        --data rows.jsonl --out scores.jsonl --reference-column oracle

The paper's Figure-4 check (arXiv 2601.22083): do the trained discriminators still rank
responses like an oracle reward where a learned reward model no longer does? Each row's
prompt + response goes through the policy; D+ and D− score its last-layer hidden states (the
final-norm output, the tensor the regularizer saw in training) at the positions the run's
``mask`` selected. The scores are raw, ``D(h)``: the running means μ the losses subtract are
constants, so they shift every score alike and change no correlation. D+ was trained to rank
reference-chosen > policy-chosen > reference-rejected (higher: more like a chosen response),
D− the mirror (higher: more like a rejected response).

Written: every input row plus ``d_pos`` and ``d_neg`` (``null`` for a row with no selected
position), as jsonl or csv by the extension of ``--out``. With ``--reference-column`` the
Pearson and Spearman correlations of both scores with that column are printed. Offline only:
the model and tokenizer load from local files.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..adapter_kit.checkpoint import STATE_FILE
from ..adapter_kit.taps import HiddenStateTap
from ..config import MaskMode
from ..formulas.discriminators import compact_positions
from ..plugins.parse import parse_config
from ..plugins.registry import resolve
from ..regularizers.ganpo_config import GANPOConfig

__all__ = [
    "SCORE_COLUMNS",
    "SavedDiscriminators",
    "correlation_report",
    "load_discriminators",
    "main",
    "pearson",
    "score_hidden_states",
    "selected_positions",
    "spearman",
]

SCORE_COLUMNS = {"d_pos": "pos", "d_neg": "neg"}  # output column → discriminator


@dataclass(frozen=True)
class SavedDiscriminators:
    """D+ and D− of a saved GANPO run (``pos``, ``neg``; eval mode, fp32) and the run's config."""

    discriminators: nn.ModuleDict
    config: GANPOConfig


def load_discriminators(path: str | os.PathLike[str], hidden_size: int) -> SavedDiscriminators:
    """Rebuild the discriminators from a ``ganpo_regularizer.pt`` written by
    :meth:`~ganpo_plugins.adapter_kit.runner.RegularizerRunner.save` (or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("regularizer") != "ganpo":
        raise ValueError(f"{path} holds state of regularizer {payload.get('regularizer')!r}; scoring needs 'ganpo'")
    config = parse_config(payload["config"])
    factory = resolve("discriminator", config.discriminator.kind)
    discriminators = nn.ModuleDict({side: factory(hidden_size, config) for side in SCORE_COLUMNS.values()})
    try:
        discriminators.load_state_dict(payload["state"]["discriminators"])
    except RuntimeError as exc:
        raise ValueError(
            f"{path}: the saved discriminators do not fit a policy of hidden size {hidden_size} "
            f"(score with the model the run trained): {exc}"
        ) from None
    return SavedDiscriminators(discriminators.float().eval(), config)


def selected_positions(mode: MaskMode, attention: Tensor, response: Tensor) -> Tensor:
    """The ``[B, T]`` positions the discriminators see, as in training
    (:meth:`~ganpo_plugins.regularizers.protocol.LatentBatch.positions`)."""
    if mode == "response":
        return response & attention
    if mode == "sequence":
        return attention
    return torch.ones_like(attention)


@torch.no_grad()
def score_hidden_states(saved: SavedDiscriminators, hidden: Tensor, mask: Tensor) -> dict[str, list[float | None]]:
    """Raw scores ``D+(h)`` and ``D−(h)`` of each row of ``hidden [B, T, H]`` at the positions
    ``mask [B, T]`` marks; ``None`` for a row with no marked position."""
    compact, compact_mask = compact_positions(hidden.float(), mask, saved.config.max_positions)
    empty = ~mask.any(1)
    out: dict[str, list[float | None]] = {}
    for column, side in SCORE_COLUMNS.items():
        scores = saved.discriminators[side](compact, compact_mask).tolist()
        out[column] = [None if e else s for s, e in zip(scores, empty.tolist(), strict=True)]
    return out


def pearson(x: Sequence[float] | Tensor, y: Sequence[float] | Tensor) -> float:
    """Pearson r ``Σ(x−x̄)(y−ȳ) / √(Σ(x−x̄)² Σ(y−ȳ)²)``; NaN when either side is constant."""
    a = torch.as_tensor(x, dtype=torch.float64)
    b = torch.as_tensor(y, dtype=torch.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / denominator if denominator > 0 else math.nan


def _average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman ρ: the Pearson r of the average ranks (Spearman, 1904)."""
    return pearson(_average_ranks(x), _average_ranks(y))


# -- the command ---------------------------------------------------------------------------


def _read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{line_number}: expected a JSON object per line")
                rows.append(row)
    return rows


def _check_fields(rows: Sequence[Mapping[str, Any]], fields: Sequence[str], path: Path) -> None:
    for i, row in enumerate(rows, 1):
        for field in fields:
            if not isinstance(row.get(field), str):
                raise ValueError(f"{path}: row {i}: field {field!r} must be a string (got {row.get(field)!r})")


def _tokenize(tokenizer: Any, prompt: str, response: str, chat: bool) -> tuple[list[int], int]:
    """Token ids of prompt + response + EOS (as TRL's DPO builds a completion) and the prompt length.

    ``chat``: the prompt is a user message under the tokenizer's chat template with the
    generation prompt; otherwise it is tokenized as given (with the tokenizer's special tokens).
    """
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tokenizer(prompt)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + response_ids, len(prompt_ids)


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _score_rows(args: argparse.Namespace, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, float | None]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, local_files_only=True).to(device).eval()
    saved = load_discriminators(args.state, model.get_output_embeddings().in_features)
    saved.discriminators.to(device)
    mode: MaskMode = args.mask or saved.config.mask
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [_tokenize(tokenizer, r[args.prompt_field], r[args.response_field], args.chat_template) for r in rows]
    scores: list[dict[str, float | None]] = []
    with HiddenStateTap(model) as tap, torch.no_grad():
        for batch in _batches(encoded, args.batch_size):
            length = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
            attention = torch.zeros(len(batch), length, dtype=torch.bool)
            response = torch.zeros(len(batch), length, dtype=torch.bool)
            for i, (ids, prompt_length) in enumerate(batch):
                input_ids[i, : len(ids)] = torch.tensor(ids)
                attention[i, : len(ids)] = True
                response[i, prompt_length : len(ids)] = True
            model(input_ids=input_ids.to(device), attention_mask=attention.long().to(device), use_cache=False)
            (record,) = tap.take()
            mask = selected_positions(mode, attention, response).to(device)
            batch_scores = score_hidden_states(saved, record.hidden, mask)
            scores += [
                dict(zip(batch_scores, values, strict=True)) for values in zip(*batch_scores.values(), strict=True)
            ]
    if any(s["d_pos"] is None for s in scores):
        warnings.warn(f"rows with no position selected by mask {mode!r} score null", RuntimeWarning, stacklevel=2)
    return scores


def _write(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        fields = list(dict.fromkeys(key for row in rows for key in row))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {
                        k: json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else v)
                        for k, v in row.items()
                    }
                )
    else:
        with open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


def correlation_report(rows: Sequence[Mapping[str, Any]], reference_column: str) -> tuple[str, dict[str, dict]]:
    """Pearson and Spearman of each score column with ``reference_column`` over the rows where
    both are numbers: the printed lines and the same numbers as a dict."""
    lines = []
    numbers: dict[str, dict] = {}
    for column in SCORE_COLUMNS:
        pairs = [
            (float(row[column]), float(row[reference_column]))
            for row in rows
            if isinstance(row.get(column), (int, float)) and isinstance(row.get(reference_column), (int, float))
        ]
        scores, reference = [p[0] for p in pairs], [p[1] for p in pairs]
        numbers[column] = {
            "n": len(pairs),
            "pearson": pearson(scores, reference) if len(pairs) > 1 else math.nan,
            "spearman": spearman(scores, reference) if len(pairs) > 1 else math.nan,
        }
        n = numbers[column]
        lines.append(
            f"{column} vs {reference_column}: pearson {n['pearson']:+.4f}  spearman {n['spearman']:+.4f}  (n={n['n']})"
        )
    return "\n".join(lines), numbers


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ganpo_plugins.score", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state", required=True, type=Path, help=f"{STATE_FILE} of the run, or its directory")
    parser.add_argument(
        "--model", required=True, type=Path, help="the policy: a local transformers causal-LM directory"
    )
    parser.add_argument("--data", required=True, type=Path, help="jsonl with a prompt and a response per row")
    parser.add_argument("--out", required=True, type=Path, help="scores: .jsonl or .csv (input rows + d_pos, d_neg)")
    parser.add_argument("--prompt-field", default="prompt")
    parser.add_argument("--response-field", default="response")
    parser.add_argument(
        "--reference-column", default=None, help="numeric column to correlate with (e.g. an oracle reward)"
    )
    parser.add_argument(
        "--mask", default=None, choices=["response", "sequence", "none"], help="default: the run's mask"
    )
    parser.add_argument(
        "--chat-template", action="store_true", help="wrap each prompt as a user message of the chat template"
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=8, help="rows per forward (with mask none, padding counts)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="policy dtype")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rows = _read_rows(args.data)
        _check_fields(rows, [args.prompt_field, args.response_field], args.data)
        column = args.reference_column
        if column is not None and not any(isinstance(row.get(column), (int, float)) for row in rows):
            raise ValueError(f"{args.data}: no row has a number in the reference column {column!r}")
        scored = [{**row, **scores} for row, scores in zip(rows, _score_rows(args, rows), strict=True)]
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _write(args.out, scored)
    print(f"scored {len(scored)} rows → {args.out}")
    if args.reference_column is not None:
        print(correlation_report(scored, args.reference_column)[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
