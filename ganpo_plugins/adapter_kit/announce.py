"""What every host run prints about its regularizer: the ON line when it is switched on, and a
closing summary after the last log line (the ON line again and how the regularizer did), so a
run's last screen says what it trained."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunRecord", "announce", "announce_on", "announce_summary", "closing_summary"]

logger = logging.getLogger("ganpo_plugins")

#: The per-micro-step 0/1 metrics a run's skips are counted from (docs/metrics.md).
SKIP_COUNTERS = {"skipped": "discriminator updates", "term_skipped": "policy terms"}
_DISCRIMINATOR = re.compile(r"^d_(?P<side>[^/]+)/(?P<metric>accuracy|saturated_steps)$")
_SIDE_NAMES = {"pos": "D+", "neg": "D−"}


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
) -> str:
    """The ON line: which regularizer at which weight runs where, who computes the base loss,
    where the hidden states and the reference come from, and that the logged loss includes the
    term. Returns the line (the closing summary repeats it)."""
    line = (
        f"ganpo: {config.regularizer} regularizer ON (weight λ={config.weight}) in {where}; base loss: {base}; "
        f"hidden states: {hidden}; reference: {reference}; the logged `loss` includes λ·L_reg ({metrics} metrics: "
        "docs/metrics.md)"
    )
    announce(line, is_main_process=main)
    return line


@dataclass
class RunRecord:
    """What the closing summary reports of one run, kept by the runner on each process: the
    training micro-steps it ran, how many of them skipped each part (:data:`SKIP_COUNTERS`), and
    the last training metrics it handed the host's logger (means over the data-parallel ranks)."""

    micro_steps: int = 0
    skips: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_COUNTERS, 0))
    last_logged: dict[str, float] = field(default_factory=dict)
    last_logged_step: int | None = None

    def micro_step(self, metrics: Mapping[str, float]) -> None:
        """One training micro-step's own metrics (unprefixed, before averaging)."""
        self.micro_steps += 1
        for key in SKIP_COUNTERS:
            self.skips[key] += int(metrics.get(key, 0.0) > 0)

    def logged(self, metrics: Mapping[str, float], step: int | None) -> None:
        """The training metrics handed to the host's logger (``ganpo/``-prefixed)."""
        if metrics:
            self.last_logged, self.last_logged_step = dict(metrics), step


def closing_summary(on_line: str, record: RunRecord) -> str:
    """The closing summary: ``on_line`` again, then one line on the last logged discriminator
    accuracies and saturation streaks (any other metric for a regularizer without
    discriminators) and the skipped micro-steps of this process."""
    last = {key.split("/", 1)[1]: value for key, value in record.last_logged.items() if "/" in key}
    sides: dict[str, dict[str, float]] = {}
    for key, value in last.items():
        match = _DISCRIMINATOR.match(key)
        if match:
            sides.setdefault(match["side"], {})[match["metric"]] = value
    if record.last_logged_step is None and not last:
        logged = "no training metrics were logged"
    elif sides:
        parts = []
        for side, values in sides.items():
            part = f"{_SIDE_NAMES.get(side, 'D_' + side)} accuracy {values.get('accuracy', float('nan')):.3f}"
            streak = int(values.get("saturated_steps", 0))
            part += f" (saturated for the last {streak} steps)" if streak else " (not saturated)"
            parts.append(part)
        logged = ", ".join(parts)
    else:
        shown = {k: v for k, v in last.items() if k not in SKIP_COUNTERS}
        logged = ", ".join(f"{k} {v:.4g}" for k, v in sorted(shown.items())) or "no regularizer metrics"
    at = "" if record.last_logged_step is None else f" (step {record.last_logged_step})"
    skipped = ", ".join(f"{record.skips[key]} {what}" for key, what in SKIP_COUNTERS.items())
    return (
        f"{on_line}\n"
        f"ganpo: run summary at the last log{at}: {logged}; skipped in {record.micro_steps} training micro-steps of "
        f"this process: {skipped} (healthy ranges, saturation: docs/metrics.md)"
    )


def announce_summary(on_line: str | None, record: RunRecord | None, main: bool = True) -> None:
    """Print the closing summary at the end of training (nothing when the regularizer never ran)."""
    if on_line is not None and record is not None:
        announce(closing_summary(on_line, record), is_main_process=main)
