"""Host-agnostic glue every adapter shares: build a regularizer, run it per micro-step, average
its metrics for the host's logger, and save/restore its state beside the host's checkpoints.

An adapter's loop, whatever the host::

    runner = RegularizerRunner(config, context, policy_model, ref_model)
    runner.tap.take()                                 # drop stale records
    loss = host_loss(...)                             # the host's own forwards fill the tap
    policy_h, ref_h = runner.latents()
    batch = LatentBatch.from_concatenated(policy_h, ref_h, attention_mask, response_mask)
    loss = loss + runner.step(batch, StepInfo(is_boundary, accumulation_steps))  # None in eval
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import RegularizerConfig, parse_config
from .distributed import mean_over_ranks, rank
from .preference import PreferenceLoss
from .protocol import LatentBatch, LatentRegularizer, RegularizerContext, StepInfo
from .registry import notify_step_metrics, resolve
from .taps import HiddenStateTap, TapRecord

__all__ = ["STATE_FILE", "RegularizerRunner", "build_regularizer", "split_policy_reference", "state_path"]

STATE_FILE = "ganpo_regularizer.pt"
METRIC_PREFIX = "ganpo/"

# On resume, a change of these config keys is refused: the saved state was built for them (its
# tensors' shapes, or a regularizer's options the runner cannot see into), and so is a change of
# any key below them.
ARCHITECTURE_KEYS = ("regularizer", "max_positions", "discriminator", "options")
# A change of these is taken silently: nothing a resumed run computes depends on them (the seed
# only starts the random stream, which the state file restores).
SILENT_KEYS = ("seed", "saturation_patience", "save_every_rank")


def build_regularizer(config: RegularizerConfig, context: RegularizerContext) -> LatentRegularizer:
    """Instantiate the configured regularizer and check that it satisfies the protocol."""
    regularizer = resolve("regularizer", config.regularizer)(config, context)
    if not isinstance(regularizer, LatentRegularizer):
        raise TypeError(
            f"regularizer {config.regularizer!r} built a {type(regularizer).__name__}, which lacks part of "
            "the LatentRegularizer protocol (mask, update, policy_term, state_dict, load_state_dict)"
        )
    return regularizer


def split_policy_reference(records: list[TapRecord]) -> tuple[Tensor, Tensor]:
    """Policy and reference hidden states from one step's tap records.

    Two tapped models: source 0 is the policy, source 1 the reference. One tapped model (LoRA,
    where the reference is the adapter-disabled policy): the record with gradient is the
    policy; without gradient anywhere (evaluation), the first call is the policy.
    """
    if len(records) != 2:
        raise RuntimeError(
            f"expected one policy and one reference forward per step, captured {len(records)}; "
            "the host ran forwards the adapter does not know about (packing, padding-free or "
            "separate chosen/rejected forwards are not supported)"
        )
    first, second = records
    if first.source != second.source:
        policy, ref = sorted(records, key=lambda r: r.source)
    elif first.grad_enabled != second.grad_enabled:
        policy, ref = (first, second) if first.grad_enabled else (second, first)
    else:
        policy, ref = first, second
    return policy.hidden, ref.hidden.detach()


def state_path(directory: str | os.PathLike[str], for_rank: int = 0) -> Path:
    name = STATE_FILE if for_rank == 0 else STATE_FILE.replace(".pt", f".rank{for_rank}.pt")
    return Path(directory) / name


class RegularizerRunner:
    """One regularizer attached to one host run."""

    def __init__(self, config: RegularizerConfig | dict[str, Any], context: RegularizerContext, *models: Any) -> None:
        self.config = parse_config(config)
        self.group = context.process_group  # None: the default group, when distributed
        self.regularizer = build_regularizer(self.config, context)
        self.tap = HiddenStateTap(*models)
        self._sums: dict[str, dict[str, float]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._counts: dict[str, dict[str, int]] = {"train": defaultdict(int), "eval": defaultdict(int)}
        self._warned_nonfinite = False

    def latents(
        self, shape: tuple[int, ...] | None = None, reference: Callable[[], Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Policy and reference hidden states ``[2B, T, H]`` captured since the last call.

        ``reference``: where the host ran no reference forward, the adapter's own (the tap then
        holds the policy's only). ``shape``: the ``[2B, T]`` of the batch's input ids, which the
        hidden states must cover (one per input token)."""
        records = self.tap.take()
        if reference is None:
            policy_h, ref_h = split_policy_reference(records)
        elif len(records) != 1:
            raise RuntimeError(
                f"expected one policy forward per step, captured {len(records)}; the host ran forwards the adapter "
                "does not know about (separate chosen/rejected forwards are not supported)"
            )
        else:
            policy_h, ref_h = records[0].hidden, reference()
        if shape is not None and (tuple(policy_h.shape[:2]) != tuple(shape) or tuple(ref_h.shape[:2]) != tuple(shape)):
            raise RuntimeError(
                f"hidden states {tuple(policy_h.shape[:2])} (policy) / {tuple(ref_h.shape[:2])} (reference) do not "
                f"cover the batch {tuple(shape)}: the host packed the sequences or added virtual tokens "
                "(prompt-learning PEFT); the regularizer needs one hidden state per input token"
            )
        return policy_h, ref_h.detach().to(policy_h.device)

    def step(self, batch: LatentBatch, info: StepInfo | None) -> Tensor:
        """Run one micro-step and return the weighted term to add to the policy loss.

        ``info`` is ``None`` in evaluation: no update, only the term (computed without gradient).
        A batch with an empty side gets no term (a constant zero, ``ganpo/term_skipped``; a learned
        regularizer's ``update`` skips it too). The regularizer sees zeros at the positions its
        ``mask`` does not select, and a non-finite
        term is replaced by a constant zero (``ganpo/term_skipped``), so whatever a regularizer
        does, no NaN or inf reaches the policy's loss or gradients.
        """
        split = "eval" if info is None else "train"
        batch = _zero_unseen(batch, self.regularizer.mask)
        metrics = {} if info is None else dict(self.regularizer.update(batch, info))
        if batch.has_empty_side(self.regularizer.mask):
            # Online RL: every advantage of one sign (or zero). No term, no NaN from a mean over nothing.
            loss = batch.policy_chosen.new_zeros(())
            metrics["term_skipped"] = 1.0
        else:
            with torch.no_grad() if info is None else contextlib.nullcontext():
                out = self.regularizer.policy_term(batch)
            metrics.update(out.metrics)
            loss = out.loss
        if bool(torch.isfinite(loss).all()):
            metrics.setdefault("term_skipped", 0.0)
        else:
            if not self._warned_nonfinite:
                self._warned_nonfinite = True
                warnings.warn(
                    f"regularizer {self.config.regularizer!r} returned a non-finite policy term "
                    f"({loss.detach().float().sum().item()}); it was replaced by 0 for that micro-step so nothing "
                    f"non-finite reaches the policy (counted in {METRIC_PREFIX}term_skipped; warned once). "
                    f"Non-finite latents at the positions mask={self.regularizer.mask!r} selects are the usual cause",
                    RuntimeWarning,
                    stacklevel=2,
                )
            loss = torch.zeros_like(loss)  # a constant: no gradient, so no NaN flows back
            metrics["term_skipped"] = 1.0
        for key, value in metrics.items():
            self._sums[split][key] += value
            self._counts[split][key] += 1
        return loss

    def record(self, metrics: Mapping[str, float], split: str = "train") -> None:
        """Add an adapter's own per-micro-step metrics (e.g. how many completions fed each side):
        averaged, prefixed and logged with the regularizer's by :meth:`pop_metrics`."""
        for key, value in metrics.items():
            self._sums[split][key] += float(value)
            self._counts[split][key] += 1

    def pop_metrics(self, split: str = "train", step: int | None = None) -> dict[str, float]:
        """Means of the metrics since the last pop, named ``ganpo/<metric>``, averaged over the
        data-parallel group (so a metric means the same on every host and rank count); plugins
        observing ``ganpo_step_metrics`` see them first. Every rank must call it (a collective
        under data parallelism)."""
        sums, counts = self._sums[split], self._counts[split]
        local = {METRIC_PREFIX + k: sums[k] / counts[k] for k in sums}
        sums.clear()
        counts.clear()
        metrics = mean_over_ranks(local, self.group)
        if metrics and step is not None:
            notify_step_metrics(step, metrics)
        return metrics

    def preference_loss(self) -> PreferenceLoss | None:
        """The configured base preference loss, or ``None`` for the host's own."""
        name = self.config.preference_loss
        return None if name is None else resolve("preference_loss", name)

    def save(self, directory: str | os.PathLike[str]) -> Path | None:
        """Write the regularizer state into ``directory`` (rank 0; every rank with
        ``save_every_rank``). Written to a temporary file in the parent of ``directory``, then
        renamed into it: a crash or a full disk never leaves a partial file in a checkpoint folder
        (the file is written inside ``directory`` only when its parent is read-only or on another
        file system, and removed there on any error)."""
        r = rank()
        if r != 0 and not self.config.save_every_rank:
            return None
        path = state_path(directory, r)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": 1,
            "regularizer": self.config.regularizer,
            "config": self.config.model_dump(mode="json"),
            "state": self.regularizer.state_dict(),
        }
        _write_atomically(payload, path)
        return path

    def load(self, directory: str | os.PathLike[str]) -> Path | None:
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
            if self.regularizer.state_dict():  # a stateless regularizer loses nothing
                warnings.warn(
                    f"{directory} holds no {STATE_FILE} (saved without this regularizer): the policy resumes from "
                    f"it, but regularizer {self.config.regularizer!r} starts fresh, with new weights and optimiser "
                    "state and its learning-rate schedule (warm-up included) from step 0, not from the policy's "
                    "step. To resume both, resume from a checkpoint saved with the regularizer attached",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return None
        payload = _read_state(path)
        self._check_saved_config(path, payload["config"])
        optimizers = _optimizers(self.regularizer)
        # The running config's hyper-parameters; AdamW.load_state_dict would put the saved ones back.
        # ``lr`` is left to the regularizer, which derives it from its restored step.
        running = [[_hyper_parameters(group) for group in opt.param_groups] for opt in optimizers]
        try:
            self.regularizer.load_state_dict(payload["state"])
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(_unreadable(path, f"{type(exc).__name__}: {exc}")) from exc
        for opt, groups in zip(optimizers, running, strict=True):
            for group, values in zip(opt.param_groups, groups, strict=True):
                group.update(values)
        return path

    def _check_saved_config(self, path: Path, saved: Mapping[str, Any]) -> None:
        old, new = _flatten(saved), _flatten(self.config.model_dump(mode="json"))
        # A key the saved config lacks (added by a later version) counts as its default then.
        defaults = _flatten(type(self.config)().model_dump(mode="json"))
        old = {**{k: v for k, v in defaults.items() if k not in old and k in new}, **old}
        # Keys the running config model does not have (another regularizer's, or an older layout
        # that dumped GANPO's keys for every regularizer) cannot change anything here.
        fields = type(self.config).model_fields
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
                stacklevel=3,
            )

    def close(self) -> None:
        self.tap.close()


_UNSET = "<unset>"


def _zero_unseen(batch: LatentBatch, mode: str) -> LatentBatch:
    """``batch`` with every latent zeroed where ``mode`` selects nothing: an inf at a prompt or
    padding position would otherwise turn into NaN under a masked mean (inf · 0)."""
    if mode == "none":
        return batch
    chosen, rejected = (m.bool().unsqueeze(-1) for m in batch.positions(mode))
    return dataclasses.replace(
        batch,
        policy_chosen=batch.policy_chosen.masked_fill(~chosen, 0),
        ref_chosen=batch.ref_chosen.masked_fill(~chosen, 0),
        policy_rejected=batch.policy_rejected.masked_fill(~rejected, 0),
        ref_rejected=batch.ref_rejected.masked_fill(~rejected, 0),
    )


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
