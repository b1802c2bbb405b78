"""The one line every host run prints when a regularizer is switched on."""

from __future__ import annotations

import logging
import sys

__all__ = ["announce"]

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
