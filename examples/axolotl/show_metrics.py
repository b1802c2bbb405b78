"""Print what a GANPO run logged and saved: per-step loss and regularizer metrics from the
last checkpoint's ``trainer_state.json`` (the discriminators' accuracies and saturation
counters among them), and the regularizer state beside the model.

    python examples/axolotl/show_metrics.py outputs/tiny-dpo-ganpo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Column header → the logged metric (docs/metrics.md says what each means and its healthy range).
COLUMNS = {
    "loss": "loss",
    "adv_loss": "ganpo/adv_loss",
    "D+_loss": "ganpo/d_pos/loss",
    "D-_loss": "ganpo/d_neg/loss",
    "D+_acc": "ganpo/d_pos/accuracy",
    "D-_acc": "ganpo/d_neg/accuracy",
    "D+_sat": "ganpo/d_pos/saturated_steps",
    "D-_sat": "ganpo/d_neg/saturated_steps",
    "skipped": "ganpo/skipped",
    "margins": "rewards/margins",
}
WIDTH = 9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path)
    out = parser.parse_args().output_dir
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not checkpoints:
        raise SystemExit(f"{out} holds no checkpoint-* folder: did the run save any?")
    history = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["log_history"]
    print("step  " + " ".join(f"{header:>{WIDTH}}" for header in COLUMNS))
    for entry in history:
        if "loss" in entry:
            values = (entry.get(key, float("nan")) for key in COLUMNS.values())
            print(f"{entry['step']:>4}  " + " ".join(f"{value:>{WIDTH}.4f}" for value in values))
    print(
        "D+/D- = the discriminators of chosen/rejected responses (ganpo/d_pos, ganpo/d_neg); _acc: accuracy; "
        "_sat: optimiser steps in a row with accuracy outside (0.51, 0.99); skipped: share of micro-steps whose "
        "discriminator update was skipped; margins: rewards/margins. What is healthy: docs/metrics.md"
    )
    for folder in [*checkpoints, out]:
        state = folder / "ganpo_regularizer.pt"
        print(f"{state}: {'present' if state.exists() else 'MISSING'}")


if __name__ == "__main__":
    main()
