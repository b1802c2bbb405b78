"""Which host versions the adapters support, what was tested where, and the version gate.

Each adapter calls :func:`require_host` before it touches a host object: outside the supported
range it refuses with one error naming the installed version and the range, instead of an
``AttributeError`` from deep inside the host. Inside the range but newer than the newest
version CI ran, it logs one warning. ``python -m ganpo_plugins doctor`` prints the same facts
for the current environment.

The ranges here are the ones ``pyproject.toml`` declares for the extras; the tested versions
are the ends of the tox matrix (``tox.ini``), with the date they were last seen green.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

__all__ = [
    "HOSTS",
    "HostSupport",
    "HostVersionError",
    "host_class",
    "installed_version",
    "require_host",
    "version_key",
]

logger = logging.getLogger(__name__)


class HostVersionError(RuntimeError):
    """The installed host is outside the range an adapter supports."""


@dataclass(frozen=True)
class HostSupport:
    """One host distribution: the supported range ``[minimum, below)``, the versions CI ran
    (``tested``, oldest first, with the date last seen green) and the features each covers."""

    name: str
    minimum: str
    below: str | None
    tested: tuple[tuple[str, str, str], ...]  # (version, python, last seen green)
    features: str

    @property
    def range(self) -> str:
        return f">={self.minimum}" + (f",<{self.below}" if self.below else "")

    def contains(self, installed: str) -> bool:
        v = version_key(installed)
        return v >= version_key(self.minimum) and (self.below is None or v < version_key(self.below))

    @property
    def newest_tested(self) -> str:
        return self.tested[-1][0]


HOSTS: dict[str, HostSupport] = {
    host.name: host
    for host in (
        HostSupport(
            "trl",
            "1.9.0",
            "2",
            (("1.9.0", "3.11", "2026-12-08"), ("1.14.1", "3.12", "2026-12-08"), ("1.16.0", "3.11", "2026-12-08")),
            "DPO, IPO, SimPO (CPO), online DPO, GRPO and RLOO, LoRA, precomputed reference log-probs, every GPO kind, "
            "accumulation, evaluation, checkpoints and resume, 2-process DDP (1.9)",
        ),
        HostSupport(
            "axolotl",
            "0.19.0",
            None,
            (("0.19.0", "3.11", "2026-12-08"), ("0.21.0", "3.12", "2026-12-08")),
            "rl: dpo / ipo / simpo / grpo, LoRA, GPO kinds, precomputed reference, resume, kill and resume (0.19), "
            "APO reward model (0.19)",
        ),
        HostSupport(
            "openrlhf",
            "0.11.2",
            None,
            (("0.11.2", "3.11", "2026-12-08"),),
            "train_dpo (ZeRO-2/3, GPO kinds, SimPO, resume, 2 ranks), train_rm with APO",
        ),
        HostSupport(
            "llamafactory",
            "0.9.5",
            None,
            (("0.9.5", "3.11", "2026-12-08"),),
            "stage: dpo with pref_loss sigmoid / simpo / orpo and package-computed GPO kinds, full / freeze / LoRA, "
            "ref_model, evaluation, DeepSpeed ZeRO-2/3 (2 ranks; LoRA resumed under ZeRO-2), checkpoints, kill and "
            "resume; stage: rm with APO",
        ),
        HostSupport(
            "deepspeed",
            "0.19.6",
            None,
            (("0.19.6", "3.11", "2026-12-08"), ("0.19.8", "3.11", "2026-12-08")),
            "under OpenRLHF: train_dpo and train_rm; under LLaMA-Factory 0.9.5 (0.19.8): DPO with ZeRO-2/3",
        ),
    )
}


def version_key(v: str) -> tuple[int, ...]:
    """The release part of a version as a comparable tuple (``1.16.0.dev0`` → ``(1, 16, 0)``)."""
    match = re.match(r"\d+(?:\.\d+)*", v)
    return tuple(int(p) for p in match.group(0).split(".")) if match else ()


def installed_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def require_host(name: str) -> str:
    """The installed version of host ``name``; raises :class:`HostVersionError` outside the
    supported range, warns (once per call site's process) when newer than the newest tested."""
    host = HOSTS[name]
    installed = installed_version(name)
    if installed is None:
        raise HostVersionError(f"{name} is not installed; the ganpo adapter for it supports {name}{host.range}")
    if not host.contains(installed):
        raise HostVersionError(
            f"{name} {installed} is installed, but the ganpo adapter supports {name}{host.range} "
            f"(tested: {', '.join(v for v, _, _ in host.tested)}); install a supported {name}, e.g. "
            f"pip install '{name}=={host.newest_tested}'"
        )
    if version_key(installed) > version_key(host.newest_tested):
        logger.warning(
            "ganpo: %s %s is newer than the newest version tested (%s); supported range %s%s",
            name,
            installed,
            host.newest_tested,
            name,
            host.range,
        )
    return installed


def host_class(obj: Any, module_prefix: str, names: Collection[str]) -> str | None:
    """The name of the first class in ``type(obj)``'s hierarchy that is named in ``names`` and
    defined in a module under ``module_prefix`` (``"trl."``), else ``None``: how a host adapter
    claims a trainer (and its subclasses), by names, so a process without that host never imports it."""
    for cls in type(obj).__mro__:
        if cls.__module__.startswith(module_prefix) and cls.__name__ in names:
            return cls.__name__
    return None
