"""What every host attachment shares: one regularizer per host trainer, a ledger of what was
wrapped or set on host objects, and ``detach()`` undoing it.

A host adapter subclasses :class:`Attachment`, lists its seams in ``WRAPPED`` (the one place a
reader finds every host object it changes) and installs them with :meth:`Attachment.wrap` and
:meth:`Attachment.set_attribute`; ``detach()`` undoes the ledger in reverse order, removes the hooks and
frees the trainer for another attachment.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from ..config import RegularizerConfig
from .runner import RegularizerRunner

__all__ = ["Attachment"]

_MARK = "_ganpo_attachment"
_ABSENT = object()


class Attachment:
    """A regularizer attached to one host trainer. ``runner`` may be ``None`` until the host knows
    the run's length (the subclass builds it)."""

    #: What every attachment changes itself (a subclass's ``WRAPPED`` lists these too).
    CORE_WRAPPED: ClassVar[Mapping[str, str]] = {
        f"trainer.{_MARK} (marks the trainer as attached)": "removed",
        "forward hooks on the decoder bodies of the tapped models (policy, reference)": "removed",
    }
    #: Every host object the attachment changes, and how ``detach()`` undoes it.
    WRAPPED: ClassVar[Mapping[str, str]] = CORE_WRAPPED
    #: The host and its version, for messages (``"trl 1.16.0"``).
    host: str = "the host"

    def __init__(self, trainer: Any, config: RegularizerConfig) -> None:
        if getattr(trainer, _MARK, None) is not None:
            raise ValueError(
                f"a regularizer is already attached to this {type(trainer).__name__}; attaching a second one would "
                "add its term twice: call detach() on the first handle before attaching again"
            )
        self.trainer = trainer
        self.config = config
        self.runner: RegularizerRunner | None = None
        self._ledger: list[tuple[Any, str, Any]] = []

    def set_attribute(self, target: Any, name: str, value: Any) -> None:
        """Set ``target.name`` (an instance attribute); ``detach()`` puts back what was there."""
        self._ledger.append((target, name, vars(target).get(name, _ABSENT)))
        setattr(target, name, value)

    def wrap(self, target: Any, wrappers: Mapping[str, Callable[..., Any]]) -> None:
        """Make each named method of ``target`` call ``wrapper(original, *args, **kwargs)`` (an
        instance attribute); refuse, naming the host version, when the host object lacks one. The
        first wrap marks the trainer as attached, so an attach refused before it leaves nothing."""
        missing = [name for name in wrappers if not callable(getattr(target, name, None))]
        if missing:
            raise TypeError(
                f"{self.host}: {type(target).__name__} has no {', '.join(missing)}, which the ganpo adapter wraps; "
                "this version changed it (see `python -m ganpo_plugins doctor` for the supported and tested versions)"
            )
        if getattr(self.trainer, _MARK, None) is not self:
            self.set_attribute(self.trainer, _MARK, self)
        for name, wrapper in wrappers.items():
            self.set_attribute(target, name, functools.partial(wrapper, getattr(target, name)))

    def _wrap(self, target: Any, wrappers: Mapping[str, Callable[..., Any]]) -> None:
        """0.1's name of :meth:`wrap` (a third-party adapter's); deprecated."""
        warnings.warn("Attachment._wrap is now Attachment.wrap", DeprecationWarning, stacklevel=2)
        self.wrap(target, wrappers)

    def _set(self, target: Any, name: str, value: Any) -> None:
        """0.1's name of :meth:`set_attribute` (a third-party adapter's); deprecated."""
        warnings.warn("Attachment._set is now Attachment.set_attribute", DeprecationWarning, stacklevel=2)
        self.set_attribute(target, name, value)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the regularizer state into ``directory`` (what every checkpoint gets)."""
        if self.runner is None:
            raise RuntimeError("the regularizer is built when training begins; nothing to save yet")
        self.runner.save(directory)

    def detach(self) -> None:
        """Undo everything in ``WRAPPED``: the host objects are as they were before the attach."""
        while self._ledger:
            target, name, previous = self._ledger.pop()
            if previous is _ABSENT:
                vars(target).pop(name, None)
            else:
                setattr(target, name, previous)
        if self.runner is not None:
            self.runner.close()
