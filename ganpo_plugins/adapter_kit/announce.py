"""The one line every host run prints when a regularizer is switched on."""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = ["announce", "announce_on"]

logger = logging.getLogger("ganpo_plugins")


def announce(message: str, is_main_process: bool = True) -> None:
    """Log ``message`` at INFO on the main process; where no logging handler would show an INFO
    record of ``ganpo_plugins`` (hosts configure only their own loggers), print it to stderr, so
    a run always says what it trains."""
    if not is_main_process:
        return
    if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
        logger.info(message)
    else:
        print(message, file=sys.stderr, flush=True)


def announce_on(
    config: Any, where: str, *, base: str, hidden: str, reference: str, metrics: str = "ganpo/*", main: bool = True
) -> None:
    """The ON line: which regularizer at which weight runs where, who computes the base loss,
    where the hidden states and the reference come from, and that the logged loss includes the term."""
    announce(
        f"ganpo: {config.regularizer} regularizer ON (weight λ={config.weight}) in {where}; base loss: {base}; "
        f"hidden states: {hidden}; reference: {reference}; the logged `loss` includes λ·L_reg ({metrics} metrics: "
        "docs/metrics.md)",
        is_main_process=main,
    )
