"""``python -m ganpo_openrlhf.train_dpo``: OpenRLHF's DPO CLI with a latent regularizer.

Every ``openrlhf.cli.train_dpo`` flag unchanged, plus ``--ganpo.*``; launched as OpenRLHF's
examples launch their CLI (``deepspeed --module ganpo_openrlhf.train_dpo ... --ganpo.weight 1.0``).
Bad ``--ganpo.*`` flags stop the run before OpenRLHF is imported, flags that do not fit OpenRLHF's
own before any model loads. Swapped for the process: OpenRLHF's ``DPOTrainer`` class (by
:class:`~ganpo_openrlhf.dpo.GANPODPOTrainer`) and ``hierarchize``
(:func:`ganpo_plugins.adapter_kit.launch.run_host_cli`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ganpo_plugins import GANPOConfig
from ganpo_plugins.adapter_kit import check_host, parse_config, run_host_cli


def _check(args: Any) -> None:
    from .dpo import facts_from_args

    check_host(facts_from_args(args), args.ganpo)


def main(argv: Sequence[str] | None = None) -> None:
    run_host_cli(
        prog="ganpo_openrlhf.train_dpo", module="openrlhf.cli.train_dpo", argv=argv, prefix="--ganpo",
        model=GANPOConfig, parse=parse_config, title="GANPO flags (added to openrlhf.cli.train_dpo's, listed below)",
        hosts=("openrlhf", "deepspeed"),
        swaps={"openrlhf.trainer.dpo_trainer:DPOTrainer": "ganpo_openrlhf.dpo:GANPODPOTrainer"},
        args_hook="openrlhf.utils.config:hierarchize", attach_as="ganpo", check=_check,
    )  # fmt: skip


if __name__ == "__main__":
    main()
