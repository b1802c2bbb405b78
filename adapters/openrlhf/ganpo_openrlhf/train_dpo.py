"""``python -m ganpo_openrlhf.train_dpo``: OpenRLHF's DPO CLI with a latent regularizer.

Takes every ``openrlhf.cli.train_dpo`` flag unchanged plus ``--ganpo.*`` for each field of
:class:`ganpo_plugins.GANPOConfig`; launch it the way OpenRLHF's examples launch their CLI::

    deepspeed --module ganpo_openrlhf.train_dpo --model.model_name_or_path ... --ganpo.weight 1.0
    torchrun --nproc_per_node 8 -m ganpo_openrlhf.train_dpo ...

Bad or unknown ``--ganpo.*`` flags stop the run before OpenRLHF is even imported; flags that do
not fit OpenRLHF's own (packing, ring attention, a second base loss) stop it before any model
loads.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ganpo_plugins import GANPOConfig, GANPOConfigError, parse_config
from ganpo_plugins.flags import FlagError, flags_help, split_flags

from .config import DPOHostCheck
from .launcher import attach_config, fail, require_openrlhf, run_host

PROG = "ganpo_openrlhf.train_dpo"
HOST = "openrlhf.cli.train_dpo"


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(flags_help("--ganpo", GANPOConfig, "GANPO flags (added to openrlhf.cli.train_dpo's, listed below)"))
    try:
        host_argv, raw = split_flags(argv, "--ganpo", GANPOConfig)
        config = parse_config(raw, prefix="--ganpo")
    except (FlagError, GANPOConfigError) as exc:
        fail(str(exc), PROG)
    require_openrlhf(PROG)

    import openrlhf.trainer.dpo_trainer as host_trainer

    from .dpo import GANPODPOTrainer

    host_trainer.DPOTrainer = GANPODPOTrainer
    attach_config("ganpo", config, DPOHostCheck.from_args, PROG)
    run_host(HOST, host_argv)


if __name__ == "__main__":
    main()
