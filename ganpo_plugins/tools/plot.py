"""One picture of a finished run's regularizer: ``python -m ganpo_plugins.plot RUN_DIR [-o out.png]``.

Reads what the host logged (every name is explained in docs/metrics.md):

- Axolotl and TRL: the ``log_history`` of ``RUN_DIR/trainer_state.json``, or of the newest
  ``RUN_DIR/checkpoint-*/trainer_state.json`` (training entries only, keys ``loss`` and
  ``ganpo/*``);
- OpenRLHF (``--logger.tensorboard_dir``), or any host that logged to TensorBoard: the newest
  TensorBoard event files under ``RUN_DIR`` (tags ``train/loss`` and ``train/ganpo/*``), read with
  TensorBoard's ``EventAccumulator``.

and writes one PNG (default ``RUN_DIR/ganpo_curves.png``) with six panels over optimiser steps:
the policy loss (which includes λ times the regularizer term), the regularizer term itself
(GANPO's ``adv_loss``, or MMD's two terms), the accuracies of D+ and D−, their real–fake score
gaps, their consecutive saturated steps, and the share of skipped steps. matplotlib (and, for
event files, tensorboard) is imported only when needed: the package itself does not depend on it.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PANELS", "RunLog", "main", "plot_run", "read_run"]

# (panel title, the series it draws: metric name -> legend label). Names as TRL/Axolotl log
# them; TensorBoard's ``train/`` prefix is removed when reading.
PANELS: tuple[tuple[str, dict[str, str]], ...] = (
    ("policy loss (includes λ · regularizer term)", {"loss": "loss"}),
    (
        "regularizer term, unweighted",
        {"ganpo/adv_loss": "adv_loss (GANPO)", "ganpo/mmd_chosen": "mmd_chosen", "ganpo/mmd_rejected": "mmd_rejected"},
    ),
    ("discriminator accuracy", {"ganpo/d_pos/accuracy": "D+", "ganpo/d_neg/accuracy": "D−"}),
    ("real − fake mean score", {"ganpo/d_pos/real_fake_gap": "D+", "ganpo/d_neg/real_fake_gap": "D−"}),
    (
        "saturated optimiser steps in a row",
        {"ganpo/d_pos/saturated_steps": "D+", "ganpo/d_neg/saturated_steps": "D−"},
    ),
    ("share of micro-steps skipped", {"ganpo/skipped": "discriminator update", "ganpo/term_skipped": "policy term"}),
)
PLOTTED = frozenset(name for _, series in PANELS for name in series)
# Reference lines drawn beside a series: (y, label). A discriminator whose accuracy is at or
# below 0.51 or at or above 0.99 counts as saturated (ganpo_plugins.regularizers.ganpo); adv_loss is ln 2 when
# the discriminators score the policy's latents at the reference's running mean.
GUIDES: dict[str, tuple[tuple[float, str], ...]] = {
    "ganpo/adv_loss": ((math.log(2), "ln 2"),),
    "ganpo/d_pos/accuracy": ((0.51, "saturated at or below 0.51"), (0.99, "saturated at or above 0.99")),
    "ganpo/d_neg/accuracy": ((0.51, "saturated at or below 0.51"), (0.99, "saturated at or above 0.99")),
    "ganpo/d_pos/real_fake_gap": ((0.0, "0"),),
    "ganpo/d_neg/real_fake_gap": ((0.0, "0"),),
}

# Panels of shares, drawn on a fixed 0–1 axis so that a flat line reads as what it is.
SHARES = frozenset({"discriminator accuracy", "share of micro-steps skipped"})

Series = tuple[list[int], list[float]]  # (steps, values)


@dataclass
class RunLog:
    """What :func:`read_run` found: the file or folder read and the plotted series in it."""

    source: Path
    series: dict[str, Series]


def _trainer_state(run_dir: Path) -> Path | None:
    """``run_dir/trainer_state.json``, else the newest ``checkpoint-N/trainer_state.json``."""
    if (run_dir / "trainer_state.json").is_file():
        return run_dir / "trainer_state.json"
    steps = {
        int(p.parent.name.removeprefix("checkpoint-")): p
        for p in run_dir.glob("checkpoint-*/trainer_state.json")
        if p.parent.name.removeprefix("checkpoint-").isdigit()
    }
    return steps[max(steps)] if steps else None


def _from_trainer_state(path: Path) -> dict[str, Series]:
    series: dict[str, Series] = {}
    for entry in json.loads(path.read_text())["log_history"]:
        if "loss" not in entry:  # evaluation entries carry eval_loss; the end-of-run summary train_loss
            continue
        for name in PLOTTED & entry.keys():
            steps, values = series.setdefault(name, ([], []))
            steps.append(int(entry["step"]))
            values.append(float(entry[name]))
    return series


def _from_event_files(folder: Path) -> dict[str, Series]:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as err:
        raise ModuleNotFoundError(
            f"{folder} holds TensorBoard event files; reading them needs tensorboard: python -m pip install tensorboard"
        ) from err
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    series: dict[str, Series] = {}
    for tag in events.Tags()["scalars"]:
        name = tag.removeprefix("train/")
        if tag.startswith("train/") and name in PLOTTED:
            points = events.Scalars(tag)
            series[name] = ([p.step for p in points], [p.value for p in points])
    return series


def read_run(run_dir: str | Path) -> RunLog:
    """The series :func:`plot_run` draws, read from a run's ``trainer_state.json`` or, without
    one, from the folder of its newest TensorBoard event file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such folder")
    state = _trainer_state(run_dir)
    if state is not None:
        source, series = state, _from_trainer_state(state)
    else:
        event_files = sorted(run_dir.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
        if not event_files:
            raise FileNotFoundError(
                f"{run_dir} holds no trainer_state.json (in it or in a checkpoint-* folder) and no TensorBoard "
                "event files: pass the output_dir of an Axolotl/TRL run, or the --logger.tensorboard_dir of an "
                "OpenRLHF run"
            )
        source = event_files[-1].parent
        series = _from_event_files(source)
    if not any(name.startswith("ganpo/") for name in series):
        raise ValueError(
            f"{source} has no ganpo/* training metrics: was the regularizer attached to this run, and did it "
            "log at least once (logging_steps)?"
        )
    return RunLog(source, series)


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, RunLog]:
    """Write the PNG (default ``run_dir/ganpo_curves.png``); returns its path and what was drawn."""
    log = read_run(run_dir)
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as err:
        raise ModuleNotFoundError("the plot needs matplotlib: python -m pip install matplotlib") from err
    out = Path(run_dir) / "ganpo_curves.png" if out is None else Path(out)
    fig = Figure(figsize=(12, 10), layout="constrained")
    axes = fig.subplots(3, 2).flatten()
    for ax, (title, wanted) in zip(axes, PANELS, strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        drawn = [name for name in wanted if name in log.series]
        for name in drawn:
            ax.plot(*log.series[name], marker=".", label=wanted[name])
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
            continue
        if title in SHARES:
            ax.set_ylim(-0.03, 1.03)
        for y, label in sorted({guide for name in drawn for guide in GUIDES.get(name, ())}):
            ax.axhline(y, color="grey", linestyle="--", linewidth=0.8, label=label)
        ax.legend(fontsize="small")
    fig.suptitle(f"regularizer curves: {log.source}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out, log


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ganpo_plugins.plot",
        description="Plot a finished run's regularizer curves (adv_loss, D+/D− accuracy, real-fake gaps, "
        "saturated and skipped steps, policy loss) into one PNG.",
    )
    parser.add_argument("run_dir", type=Path, help="Axolotl/TRL output_dir, or an OpenRLHF TensorBoard folder")
    parser.add_argument("-o", "--out", type=Path, help="the PNG to write (default: RUN_DIR/ganpo_curves.png)")
    args = parser.parse_args(argv)
    try:
        out, log = plot_run(args.run_dir, args.out)
    except (FileNotFoundError, ModuleNotFoundError, ValueError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"read {log.source}: {', '.join(sorted(log.series))}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
