"""The regularizer's state beside the host's checkpoints: written atomically (a crash or a full disk
never leaves a partial file in a checkpoint folder), read back with the saved config compared
with the running one (an architecture change refused, other changes named), and the optimiser
hyper-parameters of the running config kept over the saved ones."""

from __future__ import annotations

import errno
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import RegularizerConfig
from ..regularizers.distributed import rank
from ..regularizers.protocol import LatentRegularizer

__all__ = ["ARCHITECTURE_KEYS", "SILENT_KEYS", "STATE_FILE", "load_state", "save_state", "state_path"]

STATE_FILE = "ganpo_regularizer.pt"

# On resume, a change of these config keys is refused: the saved state was built for them (its
# tensors' shapes, or a regularizer's options the runner cannot see into), and so is a change of
# any key below them.
ARCHITECTURE_KEYS = ("regularizer", "max_positions", "discriminator", "options")
# A change of these is taken silently: nothing a resumed run computes depends on them (the seed
# only starts the random stream, which the state file restores).
SILENT_KEYS = ("seed", "saturation_patience", "save_every_rank")


def state_path(directory: str | os.PathLike[str], for_rank: int = 0) -> Path:
    name = STATE_FILE if for_rank == 0 else STATE_FILE.replace(".pt", f".rank{for_rank}.pt")
    return Path(directory) / name


def save_state(
    regularizer: LatentRegularizer, config: RegularizerConfig, directory: str | os.PathLike[str]
) -> Path | None:
    """Write the regularizer state into ``directory`` (rank 0; every rank with
    ``save_every_rank``). Written to a temporary file in the parent of ``directory``, then
    renamed into it: a crash or a full disk never leaves a partial file in a checkpoint folder
    (the file is written inside ``directory`` only when its parent is read-only or on another
    file system, and removed there on any error)."""
    r = rank()
    if r != 0 and not config.save_every_rank:
        return None
    path = state_path(directory, r)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": 1,
        "regularizer": config.regularizer,
        "config": config.model_dump(mode="json"),
        "state": regularizer.state_dict(),
    }
    _write_atomically(payload, path)
    return path


def load_state(
    regularizer: LatentRegularizer, config: RegularizerConfig, directory: str | os.PathLike[str]
) -> Path | None:
    """Restore the state saved in ``directory`` (this rank's file if present, else rank 0's).
    Returns the file read, or ``None`` when the directory holds no regularizer state.

    The saved config is compared with the running one: a changed architecture key
    (:data:`ARCHITECTURE_KEYS`) is refused before anything loads; other changes follow the
    running config (optimiser hyper-parameters included: they are set again after the
    optimiser state loads) and are listed in one warning, except :data:`SILENT_KEYS`.
    """
    path = state_path(directory, rank())
    if not path.exists():
        path = state_path(directory, 0)
    if not path.exists():
        if regularizer.state_dict():  # a stateless regularizer loses nothing
            warnings.warn(
                f"{directory} holds no {STATE_FILE} (saved without this regularizer): the policy resumes from "
                f"it, but regularizer {config.regularizer!r} starts fresh, with new weights and optimiser "
                "state and its learning-rate schedule (warm-up included) from step 0, not from the policy's "
                "step. To resume both, resume from a checkpoint saved with the regularizer attached",
                RuntimeWarning,
                stacklevel=3,  # the caller of RegularizerRunner.load
            )
        return None
    payload = _read_state(path)
    _check_saved_config(config, path, payload["config"])
    optimizers = _optimizers(regularizer)
    # The running config's hyper-parameters; AdamW.load_state_dict would put the saved ones back.
    # ``lr`` is left to the regularizer, which derives it from its restored step.
    running = [[_hyper_parameters(group) for group in opt.param_groups] for opt in optimizers]
    try:
        regularizer.load_state_dict(payload["state"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(_unreadable(path, f"{type(exc).__name__}: {exc}")) from exc
    for opt, groups in zip(optimizers, running, strict=True):
        for group, values in zip(opt.param_groups, groups, strict=True):
            group.update(values)
    return path


def _check_saved_config(config: RegularizerConfig, path: Path, saved: Mapping[str, Any]) -> None:
    old, new = _flatten(saved), _flatten(config.model_dump(mode="json"))
    # A key the saved config lacks (added by a later version) counts as its default then.
    defaults = _flatten(type(config)().model_dump(mode="json"))
    old = {**{k: v for k, v in defaults.items() if k not in old and k in new}, **old}
    # Keys the running config model does not have (another regularizer's, or an older layout
    # that dumped GANPO's keys for every regularizer) cannot change anything here.
    fields = type(config).model_fields
    old = {k: v for k, v in old.items() if k.split(".", 1)[0] in fields}
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k, _UNSET) != new.get(k, _UNSET))
    architecture = [k for k in changed if _under(k, ARCHITECTURE_KEYS)]
    if "regularizer" in architecture:  # every other difference follows from that one
        architecture = ["regularizer"]
    if architecture:
        raise ValueError(
            f"{path} was saved with a different regularizer architecture ({_changes(architecture, old, new)}); "
            "its state cannot be loaded into the configured regularizer. Resume with the old values, or start "
            "a new run (a new output directory)"
        )
    followed = [k for k in changed if not _under(k, SILENT_KEYS)]
    if followed:
        warnings.warn(
            f"{path} was saved with other settings; the resumed run follows the new config: "
            f"{_changes(followed, old, new)}",
            RuntimeWarning,
            stacklevel=4,  # the caller of RegularizerRunner.load
        )


_UNSET = "<unset>"


def _temp_dir(folder: Path) -> Path:
    """Where to write before renaming into ``folder``: its parent, so a kill mid-write leaves
    nothing inside the checkpoint folder; ``folder`` itself when the parent is not writable or
    on another file system (a rename cannot cross file systems)."""
    parent = folder.resolve().parent
    if parent != folder.resolve() and os.access(parent, os.W_OK) and parent.stat().st_dev == folder.stat().st_dev:
        return parent
    return folder


def _write_atomically(payload: dict[str, Any], path: Path) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=_temp_dir(path.parent))
    os.close(fd)
    try:
        torch.save(payload, name)
        os.replace(name, path)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(path) from exc
        raise
    except RuntimeError as exc:
        # torch's zip writer reports a short write (a full disk) as "unexpected pos N vs M".
        if "unexpected pos" in str(exc) or "PytorchStreamWriter failed" in str(exc):
            raise _disk_full(path) from exc
        raise
    finally:
        Path(name).unlink(missing_ok=True)  # gone already after the rename


def _disk_full(path: Path) -> OSError:
    return OSError(
        errno.ENOSPC,
        f"disk full while writing {path}: free space on that disk (or save checkpoints elsewhere) and save again; "
        "the checkpoint folder was left as it was",
    )


def _read_state(path: Path) -> dict[str, Any]:
    if path.stat().st_size == 0:
        raise ValueError(_unreadable(path, "the file is empty"))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # unreadable for a reason the OS already names (permissions, I/O)
    except Exception as exc:  # a damaged file fails in many ways: EOFError, RuntimeError, KeyError, ...
        raise ValueError(_unreadable(path, f"{type(exc).__name__}: {exc}")) from exc
    if not isinstance(payload, dict) or payload.get("format") != 1 or not {"config", "state"} <= payload.keys():
        raise ValueError(_unreadable(path, "not a ganpo_plugins regularizer state (format 1)"))
    return payload


def _unreadable(path: Path, reason: str) -> str:
    return (
        f"{path} is truncated or corrupt ({reason}); delete it to start the regularizer fresh while the policy "
        "resumes, or resume from an earlier checkpoint"
    )


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _under(key: str, roots: tuple[str, ...]) -> bool:
    return any(key == root or key.startswith(root + ".") for root in roots)


def _changes(keys: list[str], old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}: {old.get(k, _UNSET)!r} → {new.get(k, _UNSET)!r}" for k in keys)


def _optimizers(regularizer: LatentRegularizer) -> list[torch.optim.Optimizer]:
    """The torch optimisers a regularizer holds as attributes (directly or in a dict/list)."""
    found = []
    for value in getattr(regularizer, "__dict__", {}).values():
        items = value.values() if isinstance(value, Mapping) else value if isinstance(value, list | tuple) else [value]
        found.extend(item for item in items if isinstance(item, torch.optim.Optimizer))
    return found


def _hyper_parameters(group: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")}
