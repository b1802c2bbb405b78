"""This package's metrics in LLaMA-Factory's ``trainer_log.jsonl`` (what LLaMA Board reads)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ganpo_plugins.adapter_kit import host_class

__all__ = ["log_callback", "on_log_with"]


def log_callback(trainer: Any) -> Any | None:
    """The trainer's LLaMA-Factory ``LogCallback`` (``run_exp`` adds one to every run), or ``None``."""
    for callback in trainer.callback_handler.callbacks:
        if host_class(callback, "llamafactory.", ("LogCallback",)) is not None:
            return callback
    return None


def on_log_with(
    prefixes: tuple[str, ...],
    callback: Any,
    original: Callable[..., Any],
    args: Any,
    state: Any,
    control: Any,
    **kw: Any,
) -> Any:
    """``LogCallback.on_log`` (``original``) writing also the logged entry's metrics whose names start
    with one of ``prefixes``: the callback writes a fixed set of keys (on a worker thread), so these are
    bound to that one write."""
    entry = state.log_history[-1] if state.log_history else {}
    metrics = {k: v for k, v in entry.items() if k.startswith(prefixes)}
    write = type(callback)._write_log.__get__(callback)
    vars(callback)["_write_log"] = lambda output_dir, logs: write(output_dir, {**logs, **metrics})
    try:
        return original(args, state, control, **kw)
    finally:
        vars(callback).pop("_write_log", None)
