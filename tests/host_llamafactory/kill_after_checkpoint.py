"""``python kill_after_checkpoint.py CONFIG.yaml STEP``: ``ganpo_llamafactory.run_exp`` on CONFIG with
a callback that SIGKILLs this process as soon as the checkpoint of optimiser step STEP is saved: a
crash at a known point (``on_save`` runs after the checkpoint folder is complete), not a racing poll."""

import os
import signal
import sys

import yaml
from ganpo_llamafactory import run_exp
from transformers import TrainerCallback


class KillAfterSave(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        run_exp(yaml.safe_load(f), callbacks=[KillAfterSave(int(sys.argv[2]))])
