"""APO (Adversarial Preference Optimization, arXiv 2311.08045): round data tools and settings.

The loss is :func:`ganpo_plugins.formulas.functional.apo_rm_loss`; the round driver is ``ganpo-apo``
(:mod:`ganpo_plugins.apo.cli`); host glue lives in ``ganpo_trl.reward`` and ``ganpo_axolotl.apo``.
Nothing here imports transformers.
"""

from .data import (
    APODataError,
    apo_pairs,
    best_responses,
    check_sample_rows,
    golden_responses,
    human_pairs,
    prompt_key,
    read_jsonl,
    sft_rows,
    unique_prompt_rows,
    write_jsonl,
)
from .settings import APOConfigError, APOSettings, parse_apo_settings

__all__ = [
    "APOConfigError",
    "APODataError",
    "APOSettings",
    "apo_pairs",
    "best_responses",
    "check_sample_rows",
    "golden_responses",
    "human_pairs",
    "parse_apo_settings",
    "prompt_key",
    "read_jsonl",
    "sft_rows",
    "unique_prompt_rows",
    "write_jsonl",
]
