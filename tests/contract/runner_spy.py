"""What the regularizer did in one host run, recorded for the host-adapter contract (host_harness.py).

Every adapter runs the regularizer through :class:`~ganpo_plugins.RegularizerRunner` and builds its
handle on :class:`~ganpo_plugins.adapter_kit.attachment.Attachment`; :func:`install` wraps both, in this process
or in a host's CLI process, and writes to a record folder:

- ``infos.jsonl``: the ``StepInfo`` of every ``RegularizerRunner.step`` call;
- ``states.jsonl`` and ``state-<n>.pt``: the regularizer state at each save (before writing) and each
  load (after reading), by folder;
- ``claims.jsonl``: per attachment, the host adapter whose package built it and the answer of every
  other installed adapter asked to claim the same trainer (``None``: declined).

In-process: ``undo = install(folder)``, train, ``undo()``. In a CLI process: run
``python <this file> FOLDER -m MODULE ARGS...`` in place of ``python -m MODULE ARGS...``;
:func:`read` reads a folder back.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import runpy
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ganpo_plugins import RegularizerRunner, StepInfo
from ganpo_plugins.adapter_kit.attachment import Attachment
from ganpo_plugins.plugins.registry import load_host_adapters


@dataclass
class Record:
    infos: list[StepInfo | None] = field(default_factory=list)
    saved: dict[Path, dict[str, Any]] = field(default_factory=dict)
    loaded: dict[Path, dict[str, Any]] = field(default_factory=dict)
    claims: list[dict[str, Any]] = field(default_factory=list)  # {"claimant": name, "others": {name: claimed}}


def _append(path: Path, entry: Any) -> None:
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")


def _package(obj: Any) -> str:
    return (obj.__module__ if hasattr(obj, "__module__") else obj.__name__).split(".")[0]


def install(folder: Path) -> Callable[[], None]:
    """Record into ``folder`` (created) what every runner and attachment of this process does; returns
    the undo."""
    folder.mkdir(parents=True, exist_ok=True)
    step, save, load = RegularizerRunner.step, RegularizerRunner.save, RegularizerRunner.load
    init = Attachment.__init__
    asking: list[bool] = []  # set while other adapters are asked, so their answers are not recorded

    def keep_state(kind: str, runner: RegularizerRunner, directory: Any) -> None:
        n = sum(1 for _ in folder.glob("state-*.pt"))
        torch.save(copy.deepcopy(runner.regularizer.state_dict()), folder / f"state-{n}.pt")
        _append(folder / "states.jsonl", {"kind": kind, "dir": str(Path(directory).resolve()), "n": n})

    def spy_step(runner: RegularizerRunner, batch: Any, info: StepInfo | None) -> Any:
        _append(folder / "infos.jsonl", None if info is None else dataclasses.asdict(info))
        return step(runner, batch, info)

    def spy_save(runner: RegularizerRunner, directory: Any) -> Any:
        keep_state("saved", runner, directory)
        return save(runner, directory)

    def spy_load(runner: RegularizerRunner, directory: Any) -> Any:
        path = load(runner, directory)
        keep_state("loaded", runner, directory)
        return path

    def spy_init(attachment: Attachment, trainer: Any, config: Any) -> None:
        if not asking:
            asking.append(True)
            try:
                adapters = load_host_adapters().list_name_plugin()
                mine = [name for name, plugin in adapters if _package(plugin) == _package(type(attachment))]
                others = {}
                for name, plugin in adapters:
                    if name not in mine:
                        claim = plugin.ganpo_attach(trainer=trainer, config=config, options={})
                        others[name] = claim is not None
                        if claim is not None:
                            claim.detach()
            finally:
                asking.clear()
            _append(folder / "claims.jsonl", {"claimant": mine, "others": others})
        init(attachment, trainer, config)

    RegularizerRunner.step, RegularizerRunner.save, RegularizerRunner.load = spy_step, spy_save, spy_load
    Attachment.__init__ = spy_init

    def undo() -> None:
        RegularizerRunner.step, RegularizerRunner.save, RegularizerRunner.load = step, save, load
        Attachment.__init__ = init

    return undo


def _lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def read(folder: Path) -> Record:
    record = Record()
    record.infos = [None if info is None else StepInfo(**info) for info in _lines(folder / "infos.jsonl")]
    for entry in _lines(folder / "states.jsonl"):
        state = torch.load(folder / f"state-{entry['n']}.pt", weights_only=True)
        getattr(record, entry["kind"])[Path(entry["dir"])] = state
    record.claims = _lines(folder / "claims.jsonl")
    return record


if __name__ == "__main__":  # python runner_spy.py FOLDER -m MODULE ARGS...
    record_folder, flag, module, *args = sys.argv[1:]
    assert flag == "-m", "usage: runner_spy.py FOLDER -m MODULE ARGS..."
    install(Path(record_folder))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
