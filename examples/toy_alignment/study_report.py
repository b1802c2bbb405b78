"""Tables, JSON and plots of the regime study (study.py), from its per-run files.

For each regime: ``<regime>.md`` (two tables), ``<regime>.json`` (every cell's numbers and every run)
and ``<regime>.png``; across regimes ``summary.md`` (the paired differences in oracle reward side by
side). A difference is GANPO at λ minus plain (λ = 0) of the same seed, with its 95 % paired-t interval
(study_stats.py).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from study_stats import Interval, paired_differences, t_interval
from toy_pipeline import TEMPERATURES

TEMPS = TEMPERATURES
METHOD_LABELS = {"dpo": "DPO", "simpo": "SimPO"}
# Quantities compared with plain as paired differences.
DELTA_KEYS = (*(f"reward@{t}" for t in TEMPS), "kl_ref", "length@1.0", "drift_chosen", "drift_rejected")
# Quantities of the GANPO runs only, reported as mean over seeds.
DISC_KEYS = ("d_pos_acc", "d_neg_acc", "d_pos_saturated_share", "d_neg_saturated_share")


def brief(row: dict) -> str:
    parts = [f"reward@{t} {row[f'reward@{t}']:.3f}" for t in TEMPS]
    parts += [f"KL {row['kl_ref']:.2f}", f"len@1.0 {row['length@1.0']:.2f}"]
    if "d_pos_acc" in row:
        parts.append(f"D± acc {row['d_pos_acc']:.2f}/{row['d_neg_acc']:.2f}")
    return ", ".join(parts)


def load_runs(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/*.json"))]


def record_invocation(out: Path, start: float, wall_s: float, runs: int, workers: int) -> None:
    """Append this invocation (start, wall time, runs done, workers) to ``timing.json``: the study's
    measured time is the sum over its invocations (a resumed study has several)."""
    path = out / "timing.json"
    entries = json.loads(path.read_text()) if path.exists() else []
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(start))
    entries.append({"started": started, "wall_s": round(wall_s, 1), "runs": runs, "workers": workers})
    path.write_text(json.dumps(entries, indent=1) + "\n")


def cell(runs: list[dict], regime: str, method: str, weight: float) -> dict:
    """One (regime, method, λ) cell: the mean of every quantity over its seeds, the paired
    differences to plain with their 95 % intervals, and the discriminator diagnostics."""
    mine = {r["seed"]: r for r in runs if (r["regime"], r["method"], r["weight"]) == (regime, method, weight)}
    plain = {r["seed"]: r for r in runs if (r["regime"], r["method"], r["weight"]) == (regime, method, 0.0)}
    out: dict = {"method": method, "weight": weight, "seeds": sorted(mine)}
    out["mean"] = {k: t_interval([r[k] for r in mine.values()]).as_dict() for k in DELTA_KEYS}
    if weight > 0:
        out["delta"] = {
            k: t_interval(
                paired_differences({s: r[k] for s, r in plain.items()}, {s: r[k] for s, r in mine.items()})
            ).as_dict()
            for k in DELTA_KEYS
        }
        out["disc"] = {k: t_interval([r[k] for r in mine.values() if k in r]).as_dict() for k in DISC_KEYS}
    return out


def _ci(d: dict, digits: int = 3, signed: bool = True) -> str:
    """``+0.012 [−0.004, +0.028]``, starred when the interval excludes 0."""
    if d["n"] == 0:
        return "—"
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    text = fmt.format(d["mean"])
    if math.isnan(d["low"]):
        return text + f" (n={d['n']})"
    star = " *" if Interval(**d).excludes_zero else ""
    return f"{text} [{fmt.format(d['low'])}, {fmt.format(d['high'])}]{star}"


def _mean(d: dict, digits: int = 3) -> str:
    return "—" if d["n"] == 0 else f"{d['mean']:.{digits}f}"


def regime_tables(name: str, description: str, labels: dict, cells: list[dict], sft: list[dict]) -> str:
    n_seeds = max((len(c["seeds"]) for c in cells), default=0)
    lines = [
        f"# Regime `{name}`: {description}",
        "",
        f"Training pairs: {labels['pairs']}; labelled against the oracle (chosen scored lower than rejected): "
        f"{labels['against_oracle']:.1%}; chosen longer: {labels['chosen_longer']:.1%}, "
        f"chosen shorter: {labels['chosen_shorter']:.1%}.",
        "",
        f"Up to {n_seeds} seeds per cell. Δ = GANPO at λ − plain (λ = 0) of the same seed: mean "
        "[95 % paired-t interval]; * marks an interval that excludes 0. λ = 0 is the plain trainer.",
        "",
        "## Oracle reward of samples (higher is better)",
        "",
        "| method | λ | seeds | "
        + " | ".join(f"reward T={t}" for t in TEMPS)
        + " | "
        + " | ".join(f"Δ reward T={t}" for t in TEMPS)
        + " |",
        "|---" * (3 + 2 * len(TEMPS)) + "|",
    ]
    if sft:
        sft_means = [sum(r[f"reward@{t}"] for r in sft) / len(sft) for t in TEMPS]
        lines.append(
            f"| SFT (start) | — | {len(sft)} | " + " | ".join(f"{m:.3f}" for m in sft_means) + " | — | — | — |"
        )
    for c in cells:
        rewards = [_mean(c["mean"][f"reward@{t}"]) for t in TEMPS]
        deltas = [_ci(c["delta"][f"reward@{t}"]) if "delta" in c else "plain" for t in TEMPS]
        lines.append(
            f"| {METHOD_LABELS[c['method']]} | {c['weight']:g} | {len(c['seeds'])} | "
            + " | ".join(rewards + deltas)
            + " |"
        )
    lines += [
        "",
        "## What it costs and what it restrains",
        "",
        "KL: mean log π/π_ref of the policy's own T = 1 samples (nats per response). Length: mean response "
        "length at T = 1 (tokens, end token excluded). Drift: mean log π/π_ref of the labelled chosen and "
        "rejected training responses (nats per response). D± acc: discriminator accuracy over all steps; "
        "saturated: share of steps with accuracy ≤ 0.51 or ≥ 0.99 (the package's rule).",
        "",
        "| method | λ | KL | Δ KL | length | Δ length | drift chosen | Δ drift chosen | drift rejected "
        "| D+ / D− acc | D+ / D− saturated |",
        "|---" * 11 + "|",
    ]
    for c in cells:
        m, d = c["mean"], c.get("delta")
        disc = c.get("disc")
        acc = f"{_mean(disc['d_pos_acc'], 2)} / {_mean(disc['d_neg_acc'], 2)}" if disc else "—"
        sat = f"{_mean(disc['d_pos_saturated_share'], 2)} / {_mean(disc['d_neg_saturated_share'], 2)}" if disc else "—"
        lines.append(
            f"| {METHOD_LABELS[c['method']]} | {c['weight']:g} | {_mean(m['kl_ref'], 2)} | "
            f"{_ci(d['kl_ref'], 2) if d else '—'} | {_mean(m['length@1.0'], 2)} | "
            f"{_ci(d['length@1.0'], 2) if d else '—'} | {_mean(m['drift_chosen'], 2)} | "
            f"{_ci(d['drift_chosen'], 2) if d else '—'} | {_mean(m['drift_rejected'], 2)} | {acc} | {sat} |"
        )
    return "\n".join(lines) + "\n"


def regime_plot(path: Path, name: str, cells: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(c["method"] for c in cells))
    weights = sorted({c["weight"] for c in cells})
    x = {w: i for i, w in enumerate(weights)}
    fig, axes = plt.subplots(3, len(methods), figsize=(5.5 * len(methods), 10), squeeze=False, sharex=True)
    for col, method in enumerate(methods):
        mine = [c for c in cells if c["method"] == method]
        ax = axes[0][col]
        for j, t in enumerate(TEMPS):
            pts = [(x[c["weight"]] + 0.06 * (j - 1), c["delta"][f"reward@{t}"]) for c in mine if "delta" in c]
            _errorbar(ax, pts, f"T={t}", f"C{j}-o")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(f"{name}: {METHOD_LABELS[method]}")
        ax.set_ylabel("Δ oracle reward vs plain (95 % CI)")
        for row, (key, label) in enumerate((("kl_ref", "KL to reference (nats)"), ("length@1.0", "length @ T=1")), 1):
            _errorbar(axes[row][col], [(x[c["weight"]], c["mean"][key]) for c in mine], label, "C3-s")
            axes[row][col].set_ylabel(label + " (mean, 95 % CI)")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
        axes[-1][col].set_xticks(range(len(weights)), [f"{w:g}" for w in weights])
        axes[-1][col].set_xlabel("λ (0 = plain)")
        axes[0][col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _errorbar(ax, points: list[tuple[float, dict]], label: str, style: str) -> None:
    points = [(px, d) for px, d in points if d["n"] > 0]
    if not points:
        return
    xs = [px for px, _ in points]
    means = [d["mean"] for _, d in points]
    lo = [0.0 if math.isnan(d["low"]) else d["mean"] - d["low"] for _, d in points]
    hi = [0.0 if math.isnan(d["high"]) else d["high"] - d["mean"] for _, d in points]
    ax.errorbar(xs, means, yerr=[lo, hi], fmt=style, capsize=3, label=label)


def cost_lines(runs: list[dict], timing: list[dict]) -> list[str]:
    """What the study has run and what it cost: runs present, their summed CPU seconds (one torch thread
    per run, so about the wall time of one idle core) and each invocation's wall time."""
    timed = [r for r in runs if "eval_cpu_s" in r]
    cpu = sum(r.get("train_cpu_s", 0.0) + r["eval_cpu_s"] for r in timed)
    trained = [r for r in runs if r["regime"] != "sft"]
    lines = [
        f"Runs present: {len(trained)} trained runs and {len(runs) - len(trained)} SFT evaluations. "
        f"CPU time of the {len(timed)} that recorded it: {cpu / 60:.1f} min "
        f"({cpu / max(1, len(timed)):.0f} s per run).",
    ]
    if timing:
        walls = ", ".join(f"{t['wall_s'] / 60:.0f} min for {t['runs']} runs ({t['started']})" for t in timing)
        lines.append(f"Invocations (wall time, {timing[-1]['workers']} workers): {walls}.")
    return lines


def summary_table(per_regime: dict[str, list[dict]], runs: list[dict], timing: list[dict]) -> str:
    lines = [
        "# When does GANPO help? Paired differences in oracle reward, every regime",
        "",
        "Δ = GANPO at λ − plain (λ = 0), same seed; mean [95 % paired-t interval]; * marks an interval "
        "that excludes 0; (n=1): one seed, no interval. Per-regime tables (KL, length, drift, "
        "discriminators): `<regime>.md`.",
        "",
        *cost_lines(runs, timing),
    ]
    for t in TEMPS:
        weights = sorted({c["weight"] for cells in per_regime.values() for c in cells if c["weight"] > 0})
        lines += ["", f"## T = {t}", "", "| regime | method | " + " | ".join(f"λ={w:g}" for w in weights) + " |"]
        lines.append("|---" * (2 + len(weights)) + "|")
        for name, cells in per_regime.items():
            for method in dict.fromkeys(c["method"] for c in cells):
                by_w = {c["weight"]: c for c in cells if c["method"] == method and "delta" in c}
                row = [_ci(by_w[w]["delta"][f"reward@{t}"]) if w in by_w else "—" for w in weights]
                lines.append(f"| {name} | {METHOD_LABELS[method]} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write(out: Path, meta: dict) -> None:
    """Every regime's ``.md``/``.json``/``.png`` and ``summary.md`` from the run files under ``out``."""
    runs = load_runs(out)
    sft = [r for r in runs if r["regime"] == "sft"]
    per_regime: dict[str, list[dict]] = {}
    for name, regime in meta["regimes"].items():
        mine = [r for r in runs if r["regime"] == name]
        if not mine:
            continue
        keys = sorted({(r["method"], r["weight"]) for r in mine}, key=lambda k: (list(METHOD_LABELS).index(k[0]), k[1]))
        cells = [cell(runs, name, m, w) for m, w in keys]
        per_regime[name] = cells
        (out / f"{name}.md").write_text(
            regime_tables(name, regime["description"], regime["labels"], cells, sft) + f"\n![{name}]({name}.png)\n"
        )
        regime_plot(out / f"{name}.png", name, cells)
        payload = {"meta": meta | {"regime": regime}, "cells": cells, "runs": mine}
        (out / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").exists() else []
    (out / "summary.md").write_text(summary_table(per_regime, runs, timing))
