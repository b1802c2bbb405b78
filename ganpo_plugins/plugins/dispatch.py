"""``ganpo_plugins.attach``: the user's one call, dispatched to whichever installed host adapter
claims the trainer (the ``ganpo_attach`` hook of the entry-point group ``ganpo_plugins.hosts``).
Adapters never come back through here: each calls its own code directly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import RegularizerConfig
from .parse import as_config
from .registry import host_adapter_failures, load_host_adapters

__all__ = ["attach"]


def attach(trainer: Any, config: Mapping[str, Any] | RegularizerConfig | None = None, **options: Any) -> Any:
    """Attach the regularizer ``config`` describes to ``trainer`` through whichever installed host
    adapter claims it (the ``ganpo_attach`` hook; built-in and third-party adapters register
    alike, under the entry-point group ``ganpo_plugins.hosts``). Returns the adapter's handle
    (``detach()`` undoes the attach); ``options`` go to the adapter (e.g. ``ref_model=``). A mapping
    is parsed here, once; a parsed config goes to the adapter as it is."""
    pm = load_host_adapters()
    handle = pm.hook.ganpo_attach(trainer=trainer, config=as_config(config), options=options)
    if handle is not None:
        return handle
    adapters = sorted(name for name, _ in pm.list_name_plugin())
    failures = host_adapter_failures()
    raise TypeError(
        f"no installed ganpo host adapter handles {type(trainer).__module__}.{type(trainer).__name__} "
        f"(adapters: {', '.join(adapters) or 'none'})"
        + ("; adapters that failed to load: " + "; ".join(f"{k}: {v}" for k, v in failures.items()) if failures else "")
    )
