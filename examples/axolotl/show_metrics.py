"""Print what a GANPO run logged and saved: per-step loss and regularizer metrics from the
last checkpoint's ``trainer_state.json``, and the regularizer state beside the model.

    python examples/axolotl/show_metrics.py outputs/tiny-dpo-ganpo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = ("loss", "ganpo/adv_loss", "ganpo/d_pos/loss", "ganpo/d_neg/loss", "ganpo/d_pos/accuracy", "rewards/margins")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path)
    out = parser.parse_args().output_dir
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not checkpoints:
        raise SystemExit(f"{out} holds no checkpoint-* folder: did the run save any?")
    history = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["log_history"]
    print("step  " + "  ".join(f"{c:>20}" for c in COLUMNS))
    for entry in history:
        if "loss" in entry:
            print(f"{entry['step']:>4}  " + "  ".join(f"{entry.get(c, float('nan')):>20.4f}" for c in COLUMNS))
    for folder in [*checkpoints, out]:
        state = folder / "ganpo_regularizer.pt"
        print(f"{state}: {'present' if state.exists() else 'MISSING'}")


if __name__ == "__main__":
    main()
