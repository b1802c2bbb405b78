"""``python -m ganpo_openrlhf.train_rm``: OpenRLHF's reward-model CLI with the APO loss.

Takes every ``openrlhf.cli.train_rm`` flag unchanged plus ``--apo.c_human``, ``--apo.c_apo`` and
``--apo.samples_per_prompt`` (defaults 1, 0.1, 4: docs/methods.md, APO). The dataset rows carry
``"is_apo": true`` for APO pairs (chosen = golden response, rejected = an LLM sample) and
``false`` (or nothing) for human pairs. Launch it as OpenRLHF's examples launch their CLI::

    deepspeed --module ganpo_openrlhf.train_rm --model.model_name_or_path ... --apo.c_apo 0.1
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ganpo_plugins.adapter_kit import run_host_cli
from ganpo_plugins.apo import APOSettings, parse_apo_settings


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
    run_host_cli(
        prog="ganpo_openrlhf.train_rm", module="openrlhf.cli.train_rm", argv=argv, prefix="--apo",
        model=APOSettings, parse=parse_apo_settings, title="APO flags (added to openrlhf.cli.train_rm's, listed below)",
        hosts=("openrlhf", "deepspeed"),
        swaps={
            "openrlhf.datasets:RewardDataset": "ganpo_openrlhf.rm:APORewardDataset",
            "openrlhf.trainer.rm_trainer:RewardModelTrainer": "ganpo_openrlhf.rm:APORewardModelTrainer",
        },
        args_hook="openrlhf.utils.config:hierarchize", attach_as="apo", check=check_rm_flags,
    )  # fmt: skip


if __name__ == "__main__":
    main()
