"""APO reward-model training in Axolotl 0.19 (``reward_model: true``; APO: arXiv 2311.08045).

Axolotl trains reward models with ``AxolotlRewardTrainer``, a subclass of TRL's
``RewardTrainer``; this plugin swaps in the same trainer with the APO loss of
``ganpo_trl.reward`` and a dataset type that keeps each pair's ``is_apo`` flag::

    base_model: path/to/rm-or-base
    reward_model: true
    chat_template: tokenizer_default
    plugins:
      - ganpo_axolotl.apo.APOPlugin
    apo:                      # the paper's reference settings
      c_human: 1.0
      c_apo: 0.1
      samples_per_prompt: 4
    datasets:
      - path: rm/train.jsonl  # written by `ganpo-apo pairs` (chat format)
        ds_type: json
        type: ganpo_axolotl.apo

Rows are ``{"prompt", "chosen", "rejected", "is_apo"}`` as ``ganpo-apo pairs`` writes them (chat
messages or strings); the flag travels beside the token ids to the APO loss.
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar

from axolotl.integrations.base import BasePlugin
from pydantic import BaseModel, model_validator

from ganpo_plugins.apo.data import check_prompt, single_response
from ganpo_plugins.apo.settings import APOSettings, parse_apo_settings

__all__ = ["APOArgs", "APOPairStrategy", "APOPlugin", "load"]


class APOArgs(BaseModel):
    """The ``apo:`` block of an Axolotl config (merged into Axolotl's config model)."""

    apo: APOSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _reward_model_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("apo") is not None:
            data["apo"] = parse_apo_settings(data["apo"])  # errors name apo.<key>
            if not data.get("reward_model"):
                raise ValueError(
                    f"apo: APO trains a reward model; set `reward_model: true` (got reward_model: "
                    f"{data.get('reward_model')!r}) or remove the apo block"
                )
        return data


@cache
def _trainer_cls() -> type:
    # imported here, not at module level: Axolotl merges plugin training-argument mixins when
    # axolotl.core.training_args is first imported, which must happen after plugins register
    from axolotl.core.trainers import AxolotlRewardTrainer
    from ganpo_trl.reward import APORewardMixin

    class AxolotlAPORewardTrainer(APORewardMixin, AxolotlRewardTrainer):
        tag_names: ClassVar[list[str]] = ["axolotl", "reward", "apo"]

        def __init__(self, *args: Any, dataset_tags: list[str] | None = None, **kwargs: Any):
            # Axolotl passes dataset_tags to every plugin trainer class (it skips only its own reward
            # and PRM trainers); TRL's RewardTrainer takes no such argument
            super().__init__(*args, **kwargs)

    return AxolotlAPORewardTrainer


class APOPlugin(BasePlugin):
    """``plugins: [ganpo_axolotl.apo.APOPlugin]``: APO loss for ``reward_model: true`` runs."""

    def get_input_args(self) -> str:
        return "ganpo_axolotl.apo.APOArgs"

    def get_training_args_mixin(self) -> str:
        return "ganpo_trl.reward.APOArguments"

    def get_training_args(self, cfg: Any) -> dict[str, Any]:
        return parse_apo_settings(cfg.apo).as_arguments()

    def get_trainer_cls(self, cfg: Any) -> type | None:
        return _trainer_cls() if cfg.reward_model else None


class APOPairStrategy:
    """Dataset type ``ganpo_axolotl.apo``: tokenizes ``{"prompt", "chosen", "rejected", "is_apo"}``
    pairs into TRL's ``chosen_ids`` / ``rejected_ids`` with the same function ``ganpo-apo score``
    uses, so the reward model is trained on exactly the tokens it is later scored on. (Axolotl's
    own ``bradley_terry.chat_template`` always renders a system turn, empty or not, and drops
    other fields.) Pairs longer than ``sequence_len`` are dropped by TRL, as in TRL."""

    supports_batched = False

    def __init__(self, tokenizer: Any, chat_template: str | None):
        self.tokenizer = tokenizer
        self.chat_template = chat_template

    def tokenize_prompt(self, row: dict[str, Any]) -> dict[str, Any]:
        from ganpo_plugins.apo.hf import reward_input_ids

        where = f"type ganpo_axolotl.apo row with prompt {str(row.get('prompt'))[:60]!r}"
        prompt = check_prompt(row.get("prompt"), where)
        out: dict[str, Any] = {}
        for field in ("chosen", "rejected"):
            response = single_response(row.get(field), where, field)
            out[f"{field}_ids"] = reward_input_ids(self.tokenizer, prompt, response, self.chat_template)
        out["is_apo"] = bool(row.get("is_apo", False))
        return out


def load(tokenizer: Any, cfg: Any, ds_cfg: dict[str, Any] | None = None) -> APOPairStrategy:
    """Axolotl's prompt-strategy entry point for ``type: ganpo_axolotl.apo`` (the chat template is
    the one Axolotl resolves from ``chat_template:`` in the config)."""
    from axolotl.utils.chat_templates import get_chat_template_from_config

    return APOPairStrategy(tokenizer, get_chat_template_from_config(cfg=cfg, ds_cfg=ds_cfg, tokenizer=tokenizer))
