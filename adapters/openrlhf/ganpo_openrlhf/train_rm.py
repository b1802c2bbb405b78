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

from ganpo_plugins.apo import APOConfigError, APOSettings, parse_apo_settings
from ganpo_plugins.flags import FlagError, flags_help, split_flags

from .config import RMHostCheck
from .launcher import attach_config, fail, require_openrlhf, run_host

PROG = "ganpo_openrlhf.train_rm"
HOST = "openrlhf.cli.train_rm"


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(flags_help("--apo", APOSettings, "APO flags (added to openrlhf.cli.train_rm's, listed below)"))
    try:
        host_argv, raw = split_flags(argv, "--apo", APOSettings)
        settings = parse_apo_settings(raw, prefix="--apo")
    except (FlagError, APOConfigError) as exc:
        fail(str(exc), PROG)
    require_openrlhf(PROG)

    import openrlhf.datasets as host_datasets
    import openrlhf.trainer.rm_trainer as host_trainer

    from .rm import APORewardDataset, APORewardModelTrainer

    host_datasets.RewardDataset = APORewardDataset
    host_trainer.RewardModelTrainer = APORewardModelTrainer
    attach_config("apo", settings, RMHostCheck.from_args, PROG)
    run_host(HOST, host_argv)


if __name__ == "__main__":
    main()
