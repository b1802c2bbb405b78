"""Tables and plots of the toy experiment: ``results.json`` (every number), ``results.md`` (mean ± std over
seeds, paired GANPO − base differences, correlations, diagnostics) and two PNG plots."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from toy_pipeline import MAX_NEW_TOKENS, TEMPERATURES

TEMPS = TEMPERATURES
LABELS = {
    ("sft", "sft"): "SFT (start point)",
    ("dpo", "base"): "DPO",
    ("dpo", "ganpo"): "GANPO (DPO)",
    ("simpo", "base"): "SimPO",
    ("simpo", "ganpo"): "GANPO (SimPO)",
    ("online_dpo", "base"): "online DPO",
    ("online_dpo", "ganpo"): "online GANPO (DPO)",
}
ORDER = list(LABELS)


def brief(row: dict) -> str:
    parts = [f"reward@{t} {row[f'reward@{t}']:.3f}" for t in TEMPS]
    parts += [f"{k} {row[k]:+.2f}" for k in ("r_d_pos", "r_implicit") if k in row]
    return ", ".join(parts)


def summarize_log(history: list[dict]) -> dict:
    """First and last logged training loss, and the GANPO metrics averaged over the second half of training."""
    steps = [h for h in history if "loss" in h]
    out: dict = {}
    if steps:
        out["loss_first"], out["loss_last"] = steps[0]["loss"], steps[-1]["loss"]
    half = steps[len(steps) // 2 :]
    for key in sorted({k for h in half for k in h if k.startswith("ganpo/")}):
        values = [h[key] for h in half if key in h]
        out[key] = sum(values) / len(values)
    runtime = [h["train_runtime"] for h in history if "train_runtime" in h]
    if runtime:
        out["train_runtime"] = runtime[-1]
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def _fmt(values: list[float], digits: int = 3, signed: bool = False) -> str:
    mean, std = _mean_std(values)
    if math.isnan(mean):
        return "—"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {std:.{digits}f}"


def _groups(runs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["method"], run["arm"]), []).append(run)
    return {k: groups[k] for k in ORDER if k in groups}


def _methods(groups: dict[tuple[str, str], list[dict]]) -> list[str]:
    """The preference methods present (not the SFT start point), in :data:`ORDER`."""
    return list(dict.fromkeys(method for method, _ in groups if method != "sft"))


def table(runs: list[dict]) -> str:
    groups = _groups(runs)
    n = len({r["seed"] for r in runs})
    lines = [f"Mean ± std over {n} seed(s) (sample std); each seed's value averages all its samples.", ""]
    lines += ["### Oracle reward of samples (higher is better; 1 = perfectly sorted)", ""]
    lines += [
        "| method | "
        + " | ".join(f"reward @ T={t}" for t in TEMPS)
        + " | "
        + " | ".join(f"exact @ T={t}" for t in TEMPS)
        + " |"
    ]
    lines += ["|---" * (1 + 2 * len(TEMPS)) + "|"]
    for key, rows in groups.items():
        cells = [_fmt([r[f"reward@{t}"] for r in rows]) for t in TEMPS]
        cells += [_fmt([r[f"perfect@{t}"] for r in rows]) for t in TEMPS]
        lines.append(f"| {LABELS[key]} | " + " | ".join(cells) + " |")

    lines += ["", "### GANPO − base, paired by seed (same data order, same sampling draws)", ""]
    lines += ["| method | " + " | ".join(f"Δ reward @ T={t}" for t in TEMPS) + " | seeds where GANPO is higher |"]
    lines += ["|---" * (2 + len(TEMPS)) + "|"]
    for method in _methods(groups):
        base = {r["seed"]: r for r in groups.get((method, "base"), [])}
        ganpo = {r["seed"]: r for r in groups.get((method, "ganpo"), [])}
        seeds = sorted(base.keys() & ganpo.keys())
        if not seeds:
            continue
        cells, wins = [], []
        for t in TEMPS:
            deltas = [ganpo[s][f"reward@{t}"] - base[s][f"reward@{t}"] for s in seeds]
            cells.append(_fmt(deltas, signed=True))
            wins.append(f"{sum(d > 0 for d in deltas)}/{len(seeds)}")
        lines.append(
            f"| {LABELS[(method, 'ganpo')]} vs {LABELS[(method, 'base')]} | "
            + " | ".join(cells)
            + " | "
            + ", ".join(f"T={t}: {w}" for t, w in zip(TEMPS, wins, strict=True))
            + " |"
        )

    top = TEMPS[-1]
    lines += ["", f"### Pearson r with the oracle on the policy's own samples at T={top}", ""]
    lines += [
        "D+ / D−: the trained GANPO discriminators scoring the policy's last-layer hidden states "
        "(response positions). Implicit reward: DPO log π/π_ref, SimPO mean log π per token. "
        "Confidence: the policy's mean log π per token (for SimPO the same as its implicit reward).",
        "",
    ]
    lines += [
        "| method | r(D+, oracle) | r(D−, oracle) | r(implicit reward, oracle) | r(confidence, oracle) |",
        "|---|---|---|---|---|",
    ]
    for key, rows in groups.items():
        keys = ("r_d_pos", "r_d_neg", "r_implicit", "r_confidence")
        cells = [_fmt([r.get(k, math.nan) for r in rows], 2) for k in keys]
        lines.append(f"| {LABELS[key]} | " + " | ".join(cells) + " |")

    lines += ["", "### Behaviour along the policy's own samples", ""]
    lines += [
        "Entropy: mean per-token entropy (nats) of the policy's untempered next-token distribution. "
        "Length excess: mean response length minus the sorted answer's length (tokens). "
        f"Ended: share of samples that emit the end token within {MAX_NEW_TOKENS} tokens.",
        "",
    ]
    lines += [
        "| method | "
        + " | ".join(f"entropy @ T={t}" for t in TEMPS)
        + " | "
        + " | ".join(f"length excess @ T={t}" for t in TEMPS)
        + " | "
        + " | ".join(f"ended @ T={t}" for t in TEMPS)
        + " |"
    ]
    lines += ["|---" * (1 + 3 * len(TEMPS)) + "|"]
    for key, rows in groups.items():
        cells = [_fmt([r[f"entropy@{t}"] for r in rows]) for t in TEMPS]
        cells += [_fmt([r[f"len_excess@{t}"] for r in rows], 2, signed=True) for t in TEMPS]
        cells += [_fmt([r[f"ended@{t}"] for r in rows]) for t in TEMPS]
        lines.append(f"| {LABELS[key]} | " + " | ".join(cells) + " |")

    lines += ["", "### Training diagnostics (per run, mean ± std)", ""]
    diag = [
        ("train_s", "train+setup s"),
        ("loss_first", "first loss"),
        ("loss_last", "last loss"),
        ("ganpo/adv_loss", "adv loss"),
        ("ganpo/d_pos/accuracy", "D+ acc"),
        ("ganpo/d_neg/accuracy", "D− acc"),
    ]
    lines += ["| method | " + " | ".join(label for _, label in diag) + " |", "|---" * (1 + len(diag)) + "|"]
    for key, rows in groups.items():
        if key[0] == "sft":
            continue
        cells = []
        for k, _ in diag:
            vals = [r[k] if k in r else r.get("train_log", {}).get(k, math.nan) for r in rows]
            cells.append(_fmt(vals, 3 if k != "train_s" else 0))
        lines.append(f"| {LABELS[key]} | " + " | ".join(cells) + " |")
    lines += ["", "### Every run", ""]
    lines += ["| method | seed | " + " | ".join(f"reward @ T={t}" for t in TEMPS) + " | r(D+) | r(implicit) |"]
    lines += ["|---" * (4 + len(TEMPS)) + "|"]
    for key, rows in groups.items():
        for r in sorted(rows, key=lambda r: r["seed"]):
            cells = [f"{r[f'reward@{t}']:.3f}" for t in TEMPS]
            cells += [f"{r[k]:+.2f}" if k in r and not math.isnan(r[k]) else "—" for k in ("r_d_pos", "r_implicit")]
            lines.append(f"| {LABELS[key]} | {r['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_TITLES = {"dpo": "DPO family", "simpo": "SimPO family", "online_dpo": "online DPO family"}


def plot(out: Path, runs: list[dict], prefix: str = "") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(runs)
    written = []
    methods = _methods(groups)
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 4), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        for key, style in ((("sft", "sft"), "k:"), ((method, "base"), "C0-o"), ((method, "ganpo"), "C3-s")):
            if key not in groups:
                continue
            stats = [_mean_std([r[f"reward@{t}"] for r in groups[key]]) for t in TEMPS]
            means = [m for m, _ in stats]
            stds = [0.0 if math.isnan(s) else s for _, s in stats]
            ax.errorbar(TEMPS, means, yerr=stds, fmt=style, capsize=4, label=LABELS[key])
        ax.set_title(_TITLES[method])
        ax.set_xlabel("sampling temperature")
        ax.set_xticks(TEMPS)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("oracle reward (mean ± std over seeds)")
    fig.suptitle("SFT: one model; its ± is over the seeds' sampling draws only", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / f"{prefix}reward_vs_temperature.png", dpi=120)
    plt.close(fig)
    written.append(f"{prefix}reward_vs_temperature.png")

    top = TEMPS[-1]
    fig, axes = plt.subplots(len(methods), 2, figsize=(10, 4 * len(methods)), squeeze=False)
    for row_axes, method in zip(axes, methods, strict=True):
        panels = [
            ((method, "ganpo"), "d_pos", "D+ score (GANPO run)"),
            ((method, "base"), "implicit", "implicit reward (plain run)"),
        ]
        for ax, (key, field, xlabel) in zip(row_axes, panels, strict=True):
            run = groups.get(key, [None])[0]
            if run is None or field not in run["scatter"]:
                ax.set_axis_off()
                continue
            x, y = run["scatter"][field], run["scatter"]["oracle"]
            r = run["r_d_pos" if field == "d_pos" else "r_implicit"]
            ax.scatter(x, y, s=8, alpha=0.4)
            ax.set_title(f"{LABELS[key]}, seed {run['seed']}, T={top}: r = {r:.2f}")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("oracle reward")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / f"{prefix}score_vs_oracle.png", dpi=120)
    plt.close(fig)
    written.append(f"{prefix}score_vs_oracle.png")
    return written


def write(out: Path, runs: list[dict], meta: dict, prefix: str = "") -> None:
    """``<prefix>results.json``, ``<prefix>results.md`` and the plots (``<prefix>*.png``) into ``out``."""
    out = Path(out)
    plots = plot(out, runs, prefix)
    # Per-sample scores only for the runs the scatter plot shows (the first seed), to keep the file small.
    first = min(r["seed"] for r in runs)
    kept = []
    for run in runs:
        scatter = {k: [round(v, 4) for v in vals] for k, vals in run["scatter"].items()}
        kept.append(
            {**run, "scatter": scatter} if run["seed"] == first else {k: v for k, v in run.items() if k != "scatter"}
        )
    (out / f"{prefix}results.json").write_text(json.dumps({"meta": meta, "runs": kept}, indent=1) + "\n")
    header = [
        f"# Toy alignment results{' (online)' if prefix else ''}",
        "",
        f"Command: `{meta['command']}` — wall time {meta['wall_s'] / 60:.1f} min "
        f"({meta['threads']} torch thread(s)), {meta['pairs']} preference pairs.",
        "Numbers as they came out of that run; see README.md for the setup and a reading.",
        "",
    ]
    figures = ["", *[f"![{p}]({p})" for p in plots], ""]
    (out / f"{prefix}results.md").write_text("\n".join(header) + table(runs) + "\n".join(figures))
