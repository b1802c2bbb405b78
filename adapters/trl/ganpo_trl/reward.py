"""APO reward-model training in TRL's ``RewardTrainer`` (TRL 1.9.0; APO: arXiv 2311.08045).

``L_RM = c_human · BT(human) + (c_apo / k) · BT(APO)`` over a dataset whose rows carry a
boolean ``is_apo`` (``ganpo-apo pairs`` writes it): human preference pairs (``false``) and APO
pairs (golden response preferred over a sample of the current LLM, ``true``). The loss is
:func:`ganpo_plugins.formulas.functional.apo_rm_loss`; this module only carries the flag and calls it.

    from ganpo_trl.reward import APORewardConfig, APORewardTrainer

    args = APORewardConfig(output_dir="rm-apo", apo_c_apo=0.1, apo_samples_per_prompt=4)
    trainer = APORewardTrainer(model="path/to/rm", args=args, train_dataset=pairs)
    trainer.train()

or from the shell, with every ``RewardConfig`` flag plus ``--apo_c_human``, ``--apo_c_apo``,
``--apo_samples_per_prompt``::

    python -m ganpo_trl.reward --model_name_or_path RM --dataset_name DIR_WITH_train.jsonl --output_dir OUT

Seams used (nothing of TRL is replaced): the trainer's collator is wrapped so ``is_apo``
travels beside TRL's own batch; ``compute_loss`` lets TRL run the forward pass and its metrics,
then recomputes the loss from the rewards TRL returns (``[chosen; rejected]`` on dim 0);
``is_apo`` is added to the signature columns so ``remove_unused_columns`` keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from trl import RewardConfig, RewardTrainer

from ganpo_plugins.apo.batch import APODataCollator, apo_accuracies, apo_pair_counts
from ganpo_plugins.apo.settings import APOSettings, apo_arguments_dataclass

__all__ = ["APOArguments", "APODataCollator", "APORewardConfig", "APORewardMixin", "APORewardTrainer", "main"]

#: The APO fields of a training-arguments class, one ``apo_<field>`` per :class:`APOSettings`
#: field (TRL's ``APORewardConfig``; Axolotl merges it into its own training arguments).
APOArguments = apo_arguments_dataclass()


def apo_settings(args: Any) -> APOSettings:
    """The validated APO settings of a training-arguments object (errors name ``apo_*`` fields)."""
    return APOSettings.from_arguments(args)


@dataclass
class APORewardConfig(APOArguments, RewardConfig):
    """TRL's ``RewardConfig`` plus ``apo_c_human``, ``apo_c_apo`` and ``apo_samples_per_prompt``."""

    def __post_init__(self) -> None:
        apo_settings(self)  # fail at configuration time, before any model loads
        super().__post_init__()


def _check_is_apo_column(dataset: Any, name: str) -> None:
    features = getattr(dataset, "features", None)
    if features is None or "is_apo" not in features:
        return
    dtype = getattr(features["is_apo"], "dtype", None)
    if dtype != "bool":
        raise ValueError(
            f"{name}: column 'is_apo' must hold booleans (true for APO pairs, false for human pairs), "
            f"got {features['is_apo']}; write the pairs with `ganpo-apo pairs`"
        )


class APORewardMixin:
    """APO loss for any subclass of TRL's ``RewardTrainer`` (TRL's own, Axolotl's). Reads the
    weights from the ``apo_*`` fields of its training arguments (:data:`APOArguments`)."""

    def __init__(self, *args: Any, **kwargs: Any):
        training_args = kwargs.get("args") if "args" in kwargs else (args[1] if len(args) > 1 else None)
        try:
            self.apo_settings = apo_settings(training_args)  # before super() loads the model
        except AttributeError:
            raise TypeError(
                f"{type(self).__name__} needs args=APORewardConfig(...) (or arguments with the apo_* fields)"
            ) from None
        for key in ("train_dataset", "eval_dataset"):
            datasets = kwargs.get(key)
            for name, dataset in datasets.items() if isinstance(datasets, dict) else [(key, datasets)]:
                _check_is_apo_column(dataset, name)
        super().__init__(*args, **kwargs)
        self.data_collator = APODataCollator(self.data_collator)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if "is_apo" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "is_apo"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        is_apo = inputs.pop("is_apo")
        _, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        preferred = chosen - inputs["margin"] if "margin" in inputs else chosen
        is_apo = is_apo.to(chosen.device)
        loss = self.apo_settings.rm_loss(preferred, rejected, is_apo)
        if self.args.center_rewards_coefficient is not None:  # TRL's option, kept with the same meaning
            loss = loss + self.args.center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)
        self._log_apo_metrics(chosen.detach(), rejected.detach(), is_apo)
        return (loss, outputs) if return_outputs else loss

    def _log_apo_metrics(self, chosen: torch.Tensor, rejected: torch.Tensor, is_apo: torch.Tensor) -> None:
        """The APO accuracies of the batch over all processes; averaged at logging like TRL's metrics."""
        counts = self.accelerator.gather(apo_pair_counts(chosen, rejected, is_apo)).view(-1, 4).sum(0).tolist()
        metrics = self._metrics["train" if self.model.training else "eval"]
        for name, value in apo_accuracies(counts).items():
            metrics[name].append(value)


class APORewardTrainer(APORewardMixin, RewardTrainer):
    """TRL's ``RewardTrainer`` trained with the APO loss; pass ``args=APORewardConfig(...)``."""


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ganpo_trl.reward``: TRL's reward-training flags plus the ``--apo_*`` ones."""
    from datasets import load_dataset
    from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

    parser = TrlParser((ScriptArguments, APORewardConfig, ModelConfig), prog="python -m ganpo_trl.reward")
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    if not script_args.dataset_name:
        parser.error("--dataset_name is required: a dataset id or a directory holding train.jsonl")
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    trainer = APORewardTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    main()
