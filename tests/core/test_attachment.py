"""The core's attachment ledger (:class:`ganpo_plugins.adapter_kit.attachment.Attachment`): what an adapter
wraps or sets on host objects is undone by ``detach()``, and a refused attach leaves nothing."""

from __future__ import annotations

from typing import Any

import pytest

from ganpo_plugins import parse_config
from ganpo_plugins.adapter_kit.attachment import Attachment


class Host:
    def __init__(self) -> None:
        self.loss_types = ["sigmoid"]  # an instance attribute the adapter may set

    def loss(self, x: float) -> float:
        return x + 1


class Engine:
    def save(self, path: str) -> str:
        return f"saved {path}"


class Demo(Attachment):
    host = "demo 1.0"

    def __init__(self, trainer: Host, engine: Engine, wrap: tuple[str, ...] = ("loss",)) -> None:
        super().__init__(trainer, parse_config(None))
        self.seen: list[Any] = []
        self.wrap(trainer, {name: self._double for name in wrap})
        self.set_attribute(trainer, "loss_types", ["hinge"])
        self.wrap(engine, {"save": self._note})

    def _double(self, original: Any, x: float) -> float:
        return 2 * original(x)

    def _note(self, original: Any, path: str) -> str:
        self.seen.append(path)
        return original(path)


def test_wrappers_get_the_original_and_detach_undoes_the_ledger() -> None:
    host, engine = Host(), Engine()
    handle = Demo(host, engine)
    assert host.loss(1.0) == 4.0 and host.loss_types == ["hinge"]
    assert engine.save("x") == "saved x" and handle.seen == ["x"]
    handle.detach()
    assert vars(host) == {"loss_types": ["sigmoid"]} and vars(engine) == {}
    assert host.loss(1.0) == 2.0
    Demo(host, engine).detach()  # free for another attachment


def test_a_second_attachment_is_refused() -> None:
    host = Host()
    Demo(host, Engine())
    with pytest.raises(ValueError, match=r"already attached.*call detach"):
        Demo(host, Engine())


def test_a_missing_seam_names_the_host_version_and_leaves_nothing_behind() -> None:
    host = Host()
    with pytest.raises(TypeError, match=r"demo 1\.0: Host has no compute_loss, which the ganpo adapter wraps"):
        Demo(host, Engine(), wrap=("loss", "compute_loss"))
    assert vars(host) == {"loss_types": ["sigmoid"]}
    Demo(host, Engine()).detach()
