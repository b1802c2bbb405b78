"""``python -m ganpo_openrlhf.train_rm``: OpenRLHF's reward-model CLI with the APO loss.

Takes every ``openrlhf.cli.train_rm`` flag unchanged plus ``--apo.c_human``, ``--apo.c_apo`` and
``--apo.samples_per_prompt`` (defaults 1, 0.1, 4: docs/methods.md, APO). The dataset rows carry
``"is_apo": true`` for APO pairs (chosen = golden response, rejected = an LLM sample) and
``false`` (or nothing) for human pairs. Launch it as OpenRLHF's examples launch their CLI::

    deepspeed --module ganpo_openrlhf.train_rm --model.model_name_or_path ... --apo.c_apo 0.1
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from ganpo_plugins.apo import APOSettings, parse_apo_settings
from ganpo_plugins.flags import parse_cli_flags

from .launcher import attach_config, require_openrlhf, run_host

PROG = "ganpo_openrlhf.train_rm"
HOST = "openrlhf.cli.train_rm"


def check_rm_flags(args: Any) -> None:
    """How ``--apo.*`` fits ``openrlhf.cli.train_rm``'s own flags (before any model loads)."""
    problems = []
    if args.model.margin_loss_enable:
        problems.append(
            "--model.margin_loss_enable: APO's loss has no margin term and the per-row slot OpenRLHF uses for "
            "margins carries the is_apo flags (got True); remove --model.margin_loss_enable"
        )
    if args.model.loss_type != "sigmoid":
        problems.append(
            f"--model.loss_type: APO uses the Bradley–Terry (sigmoid) loss on both kinds of pairs "
            f"(got {args.model.loss_type!r}); use --model.loss_type sigmoid"
        )
    if problems:
        raise ValueError("; ".join(problems))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    title = "APO flags (added to openrlhf.cli.train_rm's, listed below)"
    host_argv, settings = parse_cli_flags(argv, "--apo", APOSettings, parse_apo_settings, PROG, title)
    require_openrlhf(PROG)

    import openrlhf.datasets as host_datasets
    import openrlhf.trainer.rm_trainer as host_trainer

    from .rm import APORewardDataset, APORewardModelTrainer

    host_datasets.RewardDataset = APORewardDataset
    host_trainer.RewardModelTrainer = APORewardModelTrainer
    attach_config("apo", settings, check_rm_flags, PROG)
    run_host(HOST, host_argv)


if __name__ == "__main__":
    main()
