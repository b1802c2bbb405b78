"""``ganpo-apo`` / ``python -m ganpo_plugins.apo``: the steps of an APO round (arXiv 2311.08045).

    ganpo-apo sample --model POLICY --prompts prompts.jsonl --out samples.jsonl
    ganpo-apo pairs  --samples samples.jsonl --golden golden.jsonl --human human.jsonl --out rm/train.jsonl
    (train the reward model on rm/: python -m ganpo_trl.reward ..., Axolotl or OpenRLHF train_rm)
    ganpo-apo score  --reward-model RM --samples samples.jsonl --out scored.jsonl
    ganpo-apo select --scored scored.jsonl --out sft/train.jsonl
    (fine-tune POLICY on sft/ with the host's own SFT; repeat)

``sample`` and ``score`` are resumable: rows are appended and synced batch by batch, and a
re-run with the same settings continues after the last complete row. Every input check runs
before a model is loaded.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .data import (
    APODataError,
    apo_pairs,
    best_responses,
    check_sample_rows,
    golden_responses,
    human_pairs,
    is_chat,
    prompt_key,
    prompt_messages,
    read_jsonl,
    repair_jsonl_tail,
    sft_rows,
    unique_prompt_rows,
    write_jsonl,
)

__all__ = ["main"]


def _model_id(path: Path) -> str:
    """A local model directory by its absolute path (a resumed run may start elsewhere), a hub id as given."""
    return str(path.resolve()) if path.exists() else str(path)


def _meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.json")


def _resume(out: Path, settings: dict[str, Any], overwrite: bool) -> list[dict]:
    """Rows a previous run with the same ``settings`` already wrote to ``out`` (none when starting
    fresh or over). The settings live beside the output in ``OUT.meta.json``, each under the name
    of its option (``max_new_tokens`` = ``--max-new-tokens``). Nothing is deleted here: an
    ``--overwrite`` run truncates ``out`` only once its model is loaded."""
    meta = _meta_path(out)
    if overwrite or not out.exists():
        return []
    if not meta.is_file():
        raise APODataError(
            f"--out {out} exists but has no {meta.name}, so it was not started by this command; "
            "pass --overwrite to replace it or choose another --out"
        )
    recorded = json.loads(meta.read_text())
    for key, value in settings.items():
        if recorded.get(key) != value:
            option = "--" + key.replace("_", "-")
            raise APODataError(
                f"--out {out} was started with {option} {recorded.get(key)!r}, this run asks "
                f"{value!r}: re-run with {option} {recorded.get(key)!r} to continue it, "
                "or pass --overwrite to start over"
            )
    if repair_jsonl_tail(out):
        print(f"{out}: dropped a partly written last line (interrupted run)", file=sys.stderr)
    return read_jsonl(out)


def _done_keys(done_rows: Sequence[dict], out: Path, wanted: set[str], source: str) -> set[str]:
    """Prompt keys already in ``out``; each must be one of this run's prompts."""
    done = set()
    for i, row in enumerate(done_rows):
        key = prompt_key(row["prompt"])
        if key not in wanted:
            raise APODataError(
                f"{out} row {i + 1}: its prompt is not in {source}; this output belongs to other prompts: "
                "pass --overwrite or choose another --out"
            )
        done.add(key)
    return done


def _run_resumable(
    out: Path,
    settings: dict[str, Any],
    todo: Sequence[dict],
    done: int,
    batch_size: int,
    stop_after: int | None,
    work: Callable[[Sequence[dict]], list[dict]],
    desc: str,
    overwrite: bool,
) -> int:
    """Apply ``work`` to ``todo`` batch by batch, appending each finished batch to ``out`` (emptied
    first when ``overwrite``) and syncing it to disk before the next starts. Returns the number of
    rows written."""
    from tqdm.auto import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    _meta_path(out).write_text(json.dumps(settings, indent=1))
    todo = todo[:stop_after] if stop_after is not None else todo
    written = 0
    with (
        open(out, "w" if overwrite else "a", encoding="utf-8") as f,
        tqdm(total=done + len(todo), initial=done, unit="prompt", desc=desc, file=sys.stderr) as bar,
    ):
        for start in range(0, len(todo), batch_size):
            rows = work(todo[start : start + batch_size])
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
            written += len(rows)
            bar.update(len(rows))
    return written


# ----------------------------------------------------------------------------- sample


def _check_stop_after(args: argparse.Namespace) -> None:
    if args.stop_after is not None and args.stop_after < 1:
        raise APODataError(f"--stop-after {args.stop_after}: must be at least 1 (leave it out to run to the end)")


def _cmd_sample(args: argparse.Namespace) -> int:
    _check_stop_after(args)
    for name, value, ok, fix in (
        ("--k", args.k, args.k >= 1, "at least 1 (the paper uses 4)"),
        ("--temperature", args.temperature, args.temperature > 0, "> 0 (the paper uses 1.2)"),
        ("--top-p", args.top_p, 0 < args.top_p <= 1, "in (0, 1] (the paper uses 1.0)"),
        ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1, "at least 1 (the paper uses 256)"),
        ("--batch-size", args.batch_size, args.batch_size >= 1, "at least 1"),
    ):
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            raise APODataError(f"{name} {value}: must be {fix}")
    source = str(args.prompts)
    raw = read_jsonl(args.prompts)
    if not raw:
        raise APODataError(f"{source}: no rows; one prompt per line is needed")
    for i, row in enumerate(raw):
        for field in ("samples", "rewards") + (("prompt",) if args.prompt_field != "prompt" else ()):
            if field in row:
                raise APODataError(
                    f"{source} row {i + 1}: has a field {field!r}, which sample writes itself; rename or drop it"
                )
    rows = unique_prompt_rows(raw, source, args.prompt_field, args.dedupe)
    if args.format == "text" and any(is_chat(r[args.prompt_field]) for r in rows):
        raise APODataError(f"{source}: --format text needs string prompts, but some prompts are chat messages")
    settings = {
        "model": _model_id(args.model),
        "prompt_field": args.prompt_field,
        "k": args.k,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "format": args.format,
    }
    done_rows = _resume(args.out, settings, args.overwrite)
    if done_rows:
        check_sample_rows(done_rows, str(args.out), args.k)
    done = _done_keys(done_rows, args.out, {prompt_key(r[args.prompt_field]) for r in rows}, source)
    index = {prompt_key(r[args.prompt_field]): i for i, r in enumerate(rows)}
    todo = [r for r in rows if prompt_key(r[args.prompt_field]) not in done]
    if not todo:
        print(f"{args.out}: all {len(rows)} prompts already sampled", file=sys.stderr)
        return 0

    from . import hf

    device = hf.resolve_device(args.device)
    tokenizer = hf.load_tokenizer(str(args.model), padding_side="left")
    chat = args.format == "chat" or (
        args.format == "auto" and (bool(tokenizer.chat_template) or is_chat(rows[0][args.prompt_field]))
    )
    model = hf.load_policy(str(args.model), device, hf.resolve_dtype(args.dtype, device))

    def work(batch: Sequence[dict]) -> list[dict]:
        prompts = [prompt_messages(r[args.prompt_field]) if chat else r[args.prompt_field] for r in batch]
        # seeded by the position of the batch's first prompt, so a resumed run draws like a fresh one
        seed = args.seed + index[prompt_key(prompts[0])]
        samples = hf.generate_samples(
            model, tokenizer, prompts, args.k, args.temperature, args.top_p, args.max_new_tokens, seed
        )
        return [
            {"prompt": p, **{f: v for f, v in r.items() if f != args.prompt_field}, "samples": s}
            for r, p, s in zip(batch, prompts, samples, strict=True)
        ]

    n = _run_resumable(
        args.out, settings, todo, len(done), args.batch_size, args.stop_after, work, "sample", args.overwrite
    )
    left = len(todo) - n
    print(
        f"{args.out}: wrote {n} prompts x {args.k} samples"
        + (f"; {left} prompts left (re-run to continue)" if left else ""),
        file=sys.stderr,
    )
    return 0


# ----------------------------------------------------------------------------- score


def _cmd_score(args: argparse.Namespace) -> int:
    _check_stop_after(args)
    if args.batch_size < 1:
        raise APODataError(f"--batch-size {args.batch_size}: must be at least 1")
    source = str(args.samples)
    rows = read_jsonl(args.samples)
    k = check_sample_rows(rows, source)
    for i, row in enumerate(rows):
        if "rewards" in row:
            raise APODataError(
                f"{source} row {i + 1}: already has 'rewards' (a scored file?); pass the samples file from sample"
            )
    if args.input_template is not None:
        if args.trained_by != "openrlhf":
            raise APODataError(
                f"--input-template {args.input_template!r}: only OpenRLHF reward models read it; "
                "add --trained-by openrlhf or drop --input-template"
            )
        if "{}" not in args.input_template:
            raise APODataError(
                f"--input-template {args.input_template!r}: needs a {{}} where the prompt goes, "
                "as OpenRLHF's --data.input_template (e.g. 'User: {}\\nAssistant: ')"
            )
        if is_chat(rows[0]["prompt"]):
            raise APODataError(
                f"--input-template: {source} holds chat prompts, which go through the chat template "
                "(OpenRLHF's --data.apply_chat_template); drop --input-template"
            )
    settings = {
        "reward_model": _model_id(args.reward_model),
        "samples": str(args.samples.resolve()),
        "trained_by": args.trained_by,
        "input_template": args.input_template,
    }
    done_rows = _resume(args.out, settings, args.overwrite)
    done = _done_keys(done_rows, args.out, {prompt_key(r["prompt"]) for r in rows}, source)
    todo = [r for r in rows if prompt_key(r["prompt"]) not in done]
    if not todo:
        print(f"{args.out}: all {len(rows)} prompts already scored", file=sys.stderr)
        return 0

    from . import hf

    device = hf.resolve_device(args.device)
    tokenizer = hf.load_tokenizer(str(args.reward_model), padding_side="right")
    model = hf.load_reward_model(str(args.reward_model), tokenizer, device, hf.resolve_dtype(args.dtype, device))
    if args.trained_by == "openrlhf":
        token_ids = functools.partial(hf.openrlhf_reward_input_ids, input_template=args.input_template)
    else:
        token_ids = hf.reward_input_ids  # Axolotl's RM (type: ganpo_axolotl.apo) tokenizes as TRL's

    def work(batch: Sequence[dict]) -> list[dict]:
        items = [(r["prompt"], s) for r in batch for s in r["samples"]]
        rewards = hf.score_responses(model, tokenizer, items, args.batch_size * k, token_ids)
        return [{**r, "rewards": rewards[i * k : (i + 1) * k]} for i, r in enumerate(batch)]

    n = _run_resumable(
        args.out, settings, todo, len(done), args.batch_size, args.stop_after, work, "score", args.overwrite
    )
    print(f"{args.out}: scored {n} prompts x {k} samples", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- pairs and select


def _cmd_pairs(args: argparse.Namespace) -> int:
    samples = read_jsonl(args.samples)
    golden = golden_responses(read_jsonl(args.golden), str(args.golden), args.golden_field)
    pairs = apo_pairs(samples, golden, str(args.samples), args.k, golden_source=str(args.golden))
    k = len(pairs) // len(samples)
    chat = is_chat(samples[0]["prompt"])
    human = human_pairs(read_jsonl(args.human), str(args.human), chat) if args.human else []
    write_jsonl(args.out, human + pairs)
    empty = sum(not s.strip() for r in samples for s in r["samples"])
    print(
        f"{args.out}: {len(pairs)} APO pairs ({len(samples)} prompts x k={k}"
        + (f", {empty} empty samples kept" if empty else "")
        + f") + {len(human)} human pairs, {'chat' if chat else 'text'} format",
        file=sys.stderr,
    )
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    best, skipped = best_responses(read_jsonl(args.scored), str(args.scored))
    write_jsonl(args.out, sft_rows(best, args.format))
    print(
        f"{args.out}: {len(best)} SFT rows ({args.format})"
        + (f"; {skipped} prompts skipped: every sample was empty" if skipped else ""),
        file=sys.stderr,
    )
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ganpo-apo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def device_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="auto", help="cuda, cpu, cuda:1, ... (auto: cuda when available)")
        p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
        p.add_argument("--stop-after", type=int, default=None, metavar="N", help="stop after N new prompts")
        p.add_argument("--overwrite", action="store_true", help="start over instead of continuing --out")

    p = sub.add_parser("sample", help="draw k responses per prompt from a causal LM (resumable)")
    p.add_argument("--model", required=True, type=Path, help="policy: a HF causal LM directory or hub id")
    p.add_argument("--prompts", required=True, type=Path, help="jsonl with one prompt per row")
    p.add_argument("--out", required=True, type=Path, help="samples jsonl (appended batch by batch)")
    p.add_argument("--prompt-field", default="prompt", help="field of --prompts holding the prompt")
    p.add_argument("--dedupe", action="store_true", help="keep the first row of a repeated prompt")
    p.add_argument("--k", type=int, default=4, help="samples per prompt (paper: 4)")
    p.add_argument("--temperature", type=float, default=1.2, help="paper: 1.2")
    p.add_argument("--top-p", type=float, default=1.0, help="paper: 1.0")
    p.add_argument("--max-new-tokens", type=int, default=256, help="paper: 256")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (x k sequences)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--format",
        default="auto",
        choices=["auto", "chat", "text"],
        help="chat: prompt through the tokenizer's chat template; text: continue the raw prompt; "
        "auto: chat when the tokenizer has a chat template or the prompts are messages",
    )
    device_options(p)
    p.set_defaults(run=_cmd_sample)

    p = sub.add_parser("score", help="reward of every sample from a sequence-classification RM (resumable)")
    p.add_argument("--reward-model", required=True, type=Path, help="AutoModelForSequenceClassification RM")
    p.add_argument("--samples", required=True, type=Path, help="samples jsonl from sample")
    p.add_argument("--out", required=True, type=Path, help="scored jsonl: samples rows plus 'rewards'")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward (x k sequences)")
    p.add_argument(
        "--trained-by",
        default="trl",
        choices=["trl", "axolotl", "openrlhf"],
        help="the trainer of the RM: its inputs are tokenized as that trainer did, so the reward is read at "
        "the token it was trained on (trl and axolotl: the chat template or text + eos; openrlhf: "
        "text + ' ' + eos, as its train_rm)",
    )
    p.add_argument(
        "--input-template",
        default=None,
        help="with --trained-by openrlhf and string prompts: the --data.input_template the RM was trained with",
    )
    device_options(p)
    p.set_defaults(run=_cmd_score)

    p = sub.add_parser("pairs", help="APO pairs (golden vs each sample), optionally with human pairs")
    p.add_argument("--samples", required=True, type=Path, help="samples jsonl from sample")
    p.add_argument("--golden", required=True, type=Path, help="jsonl with 'prompt' and the golden response")
    p.add_argument("--golden-field", default="golden", help="field of --golden holding the golden response")
    p.add_argument("--human", type=Path, default=None, help="human preference pairs jsonl (prompt/chosen/rejected)")
    p.add_argument("--k", type=int, default=None, help="samples per prompt to expect (default: the first row's)")
    p.add_argument("--out", required=True, type=Path, help="pairs jsonl for reward-model training")
    p.set_defaults(run=_cmd_pairs)

    p = sub.add_parser("select", help="best non-empty sample per prompt -> SFT dataset")
    p.add_argument("--scored", required=True, type=Path, help="scored jsonl from score")
    p.add_argument("--out", required=True, type=Path, help="SFT jsonl")
    p.add_argument("--format", default="messages", choices=["messages", "prompt-completion"])
    p.set_defaults(run=_cmd_select)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except APODataError as exc:
        print(f"ganpo-apo {args.command}: error: {exc}", file=sys.stderr)
        return 2
