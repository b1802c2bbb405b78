"""APO (arXiv 2311.08045) in LLaMA-Factory's reward-model stage (``stage: rm``), served by
``ganpo-llamafactory-cli`` for a config with an ``apo:`` block (docs/apo.md).

``L_RM = c_human · BT(human) + (c_apo / k) · BT(APO)`` over pairs whose rows carry ``is_apo``
(``ganpo-apo pairs`` writes it; rows without it are human pairs), in place of LLaMA-Factory's
Bradley–Terry mean; the loss is :func:`ganpo_plugins.formulas.functional.apo_rm_loss`.
LLaMA-Factory keeps only the columns its dataset format names, so the flag is carried through its
three steps: the format converter (the row's flag beside the aligned columns), the pairwise
tokenizer (one flag per pair it keeps) and the pairwise collator (a bool tensor beside the batch).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import Any

import torch

from ganpo_plugins.apo import APOSettings
from ganpo_plugins.apo.batch import IS_APO, APODataCollator, apo_accuracies, apo_pair_counts, row_is_apo

from .trainer_log import log_callback, on_log_with

__all__ = ["ALIGNED_FLAG", "FlagCarryingConverter", "FlagCarryingTokenizer", "apo_pairwise_trainer"]

#: The flag's column among LLaMA-Factory's aligned ones (``_prompt``, ``_response``, ...).
ALIGNED_FLAG = "_is_apo"


class FlagCarryingConverter:
    """A LLaMA-Factory dataset converter (alpaca, sharegpt, openai) whose output also holds the row's
    ``is_apo`` flag; a flag that is not a boolean stops the run while the data is read."""

    def __init__(self, convert: Any) -> None:
        self.convert = convert

    def __call__(self, example: dict[str, Any]) -> dict[str, Any]:
        where = f"dataset {self.convert.dataset_attr.dataset_name}"  # the file, or the hub / script name
        return {**self.convert(example), ALIGNED_FLAG: row_is_apo(example, where)}


class FlagCarryingTokenizer:
    """A pairwise dataset processor's ``preprocess_dataset`` that keeps each pair's flag. It runs
    the processor one row at a time, because the processor drops the rows it cannot encode."""

    def __init__(self, preprocess: Any) -> None:
        self.preprocess = preprocess

    def __call__(self, examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
        flags = examples[ALIGNED_FLAG]
        columns = {k: v for k, v in examples.items() if k != ALIGNED_FLAG}
        out: dict[str, list[Any]] = defaultdict(list)
        for i, flag in enumerate(flags):
            encoded = self.preprocess({k: v[i : i + 1] for k, v in columns.items()})
            for key, values in encoded.items():
                out[key].extend(values)
            out[IS_APO].extend([flag] * len(encoded.get("chosen_input_ids", ())))
        return dict(out)


def apo_pairwise_trainer(pairwise_trainer: type, settings: APOSettings) -> type:
    """LLaMA-Factory's ``PairwiseTrainer`` (``pairwise_trainer``) trained with the APO loss."""

    class APOPairwiseTrainer(pairwise_trainer):
        """LLaMA-Factory's ``PairwiseTrainer`` with the APO loss: LLaMA-Factory runs its forward and
        reads the rewards at each sequence's last token; the loss is recomputed from those rewards."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.apo_settings = settings
            self.data_collator = APODataCollator(self.data_collator)
            self._apo_counts = {"train": torch.zeros(4), "eval": torch.zeros(4)}
            callback = log_callback(self)
            if callback is not None:  # this run's own LogCallback instance
                callback.on_log = functools.partial(on_log_with, ("apo/", "eval_apo/"), callback, callback.on_log)
            if self.is_world_process_zero():
                dataset, count = self.train_dataset, ""
                if IS_APO in (getattr(dataset, "column_names", None) or ()):  # not for a streamed dataset
                    count = f"; {sum(dataset[IS_APO])} of {len(dataset)} training pairs are APO pairs"
                print(f"apo: APO reward-model loss ON in {pairwise_trainer.__name__}: {settings.describe()}{count}")

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any):
            is_apo = inputs.pop(IS_APO)
            _, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
            chosen, rejected = (scores.reshape(-1).float() for scores in outputs[1:])
            loss = self.apo_settings.rm_loss(chosen, rejected, is_apo.to(chosen.device))
            counts = apo_pair_counts(chosen.detach(), rejected.detach(), is_apo)
            mode = "train" if model.training else "eval"
            self._apo_counts[mode] += self.accelerator.gather(counts).view(-1, 4).sum(0).cpu()
            return (loss, (loss, *outputs[1:])) if return_outputs else loss

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            """The APO accuracies since the last log join the entry (``eval_apo/*`` after an evaluation)."""
            mode, prefix = ("eval", "eval_") if any(k.startswith("eval_") for k in logs) else ("train", "")
            if self._apo_counts[mode][[1, 3]].sum() > 0:
                logs = {**logs, **{prefix + k: v for k, v in apo_accuracies(self._apo_counts[mode].tolist()).items()}}
                self._apo_counts[mode].zero_()
            super().log(logs, *args, **kwargs)

    return APOPairwiseTrainer
