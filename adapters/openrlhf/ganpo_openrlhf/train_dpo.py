"""``python -m ganpo_openrlhf.train_dpo``: OpenRLHF's DPO CLI with a latent regularizer.

Takes every ``openrlhf.cli.train_dpo`` flag unchanged plus ``--ganpo.*`` for each config key;
launch it the way OpenRLHF's examples launch their CLI::

    deepspeed --module ganpo_openrlhf.train_dpo --model.model_name_or_path ... --ganpo.weight 1.0

Bad or unknown ``--ganpo.*`` flags stop the run before OpenRLHF is even imported; flags that do
not fit OpenRLHF's own (packing, ring attention, a second base loss) stop it before any model loads.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ganpo_plugins import GANPOConfig, parse_config
from ganpo_plugins.flags import parse_cli_flags
from ganpo_plugins.host_rules import check_host

from .launcher import attach_config, require_openrlhf, run_host

PROG = "ganpo_openrlhf.train_dpo"
HOST = "openrlhf.cli.train_dpo"


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    title = "GANPO flags (added to openrlhf.cli.train_dpo's, listed below)"
    host_argv, config = parse_cli_flags(argv, "--ganpo", GANPOConfig, parse_config, PROG, title)
    require_openrlhf(PROG)

    import openrlhf.trainer.dpo_trainer as host_trainer

    from .dpo import GANPODPOTrainer, facts_from_args

    host_trainer.DPOTrainer = GANPODPOTrainer
    attach_config("ganpo", config, lambda args: check_host(facts_from_args(args), args.ganpo), PROG)
    run_host(HOST, host_argv)


if __name__ == "__main__":
    main()
