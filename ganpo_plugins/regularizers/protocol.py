"""The ``LatentRegularizer`` protocol and the small data types it exchanges with adapters.

An adapter captures last-layer hidden states from the host's own forwards, packs them into a
:class:`LatentBatch`, and for every training micro-step calls :meth:`LatentRegularizer.update`
(the regularizer's own learning, e.g. discriminators) and then
:meth:`LatentRegularizer.policy_term` (the weighted term added to the policy loss). It saves
and restores :meth:`~LatentRegularizer.state_dict` with the host's checkpoints. Adapters never
know which regularizer they run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..config import MASK_MODES, MaskMode

Metrics = dict[str, float]


@dataclass(frozen=True)
class LatentBatch:
    """Last-layer hidden states of one micro-batch, in two sides: chosen and rejected.

    ``policy_*`` carry gradient into the policy; ``ref_*`` come from the frozen reference
    (no gradient). A side's two latents are ``[B_side, T, H]`` and its masks ``[B_side, T]``
    booleans: ``attention_*`` marks real (non-padding) tokens, ``response_*`` the response tokens.
    Offline preference pairs give sides of one size (row ``i`` of each side is one pair); online RL
    gives unpaired sides that may differ in size or be empty (:meth:`from_sides`).
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor
    ref_rejected: Tensor
    attention_chosen: Tensor
    attention_rejected: Tensor
    response_chosen: Tensor
    response_rejected: Tensor
    #: Row ``i`` of each side is one pair (offline); :class:`UnpairedLatentBatch` says otherwise.
    paired: ClassVar[bool] = True

    def __post_init__(self) -> None:
        # A mask of the wrong shape would broadcast or index silently: refuse it by name.
        if self.paired and self.policy_chosen.shape[0] != self.policy_rejected.shape[0]:
            raise ValueError(
                f"LatentBatch: paired sides of {self.policy_chosen.shape[0]} and {self.policy_rejected.shape[0]} rows; "
                "sides of different sizes are unpaired: build them with LatentBatch.from_sides"
            )
        for side in ("chosen", "rejected"):
            name = f"policy_{side}"
            policy = getattr(self, name)
            if policy.dim() != 3:
                raise ValueError(f"LatentBatch: {name} must be [B, T, H], got shape {list(policy.shape)}")
            ref = getattr(self, f"ref_{side}")
            if ref.dim() != 3 or ref.shape[:2] != policy.shape[:2]:
                raise ValueError(_shape_error(f"ref_{side}", ref, name, policy))
            for mask in (f"attention_{side}", f"response_{side}"):
                _check_mask(mask, getattr(self, mask), name, policy)

    @classmethod
    def from_concatenated(
        cls, policy: Tensor, ref: Tensor, attention_mask: Tensor, response_mask: Tensor
    ) -> LatentBatch:
        """Split host tensors that stack ``[chosen; rejected]`` on dim 0 (TRL, OpenRLHF)."""
        if policy.shape[0] % 2 or policy.shape[:2] != ref.shape[:2]:
            raise ValueError(
                f"expected [chosen; rejected] stacked on dim 0 with equal shapes, got policy "
                f"{tuple(policy.shape)} and reference {tuple(ref.shape)}"
            )
        _check_mask("attention_mask", attention_mask, "policy", policy)
        _check_mask("response_mask", response_mask, "policy", policy)
        pc, pr = policy.chunk(2)
        rc, rr = ref.chunk(2)
        ac, ar = attention_mask.bool().chunk(2)
        sc, sr = response_mask.bool().chunk(2)
        return cls(pc, pr, rc, rr, ac, ar, sc, sr)

    @classmethod
    def from_sides(
        cls,
        policy: Tensor,
        ref: Tensor,
        attention_mask: Tensor,
        response_mask: Tensor,
        chosen: Tensor,
        rejected: Tensor,
    ) -> UnpairedLatentBatch:
        """Unpaired sides of host tensors ``[N, T, ...]``: the rows ``chosen`` and ``rejected`` select
        (boolean ``[N]`` masks, disjoint; a row in neither joins no side). GRPO/RLOO: chosen = positive
        advantage, rejected = negative (docs/methods.md)."""
        if policy.shape[:2] != ref.shape[:2]:
            raise ValueError(f"policy {tuple(policy.shape)} and reference {tuple(ref.shape)} latents differ in shape")
        for name, mask in (("attention_mask", attention_mask), ("response_mask", response_mask)):
            _check_mask(name, mask, "policy", policy)
        for name, rows in (("chosen", chosen), ("rejected", rejected)):
            if rows.shape != policy.shape[:1] or rows.dtype != torch.bool:
                shape = list(rows.shape)
                raise ValueError(f"{name} must be a bool mask of shape [{policy.shape[0]}], got {rows.dtype} {shape}")
        if bool((chosen & rejected).any()):
            raise ValueError("a row cannot be on both sides: chosen and rejected overlap")
        sides = [(t[chosen], t[rejected]) for t in (policy, ref, attention_mask.bool(), response_mask.bool())]
        (pc, pr), (rc, rr), (ac, ar), (sc, sr) = sides
        return UnpairedLatentBatch(pc, pr, rc, rr, ac, ar, sc, sr)

    def side_rows(self, mode: MaskMode) -> tuple[int, int]:
        """How many rows of each side (chosen, rejected) have at least one position ``mode`` selects."""
        return tuple(int(m.any(1).sum()) for m in self.positions(mode))  # type: ignore[return-value]

    def has_empty_side(self, mode: MaskMode) -> bool:
        """True when a side has no row with a selected position: no regularizer step for this batch."""
        return min(self.side_rows(mode)) == 0

    def positions(self, mode: MaskMode) -> tuple[Tensor, Tensor]:
        """The ``[B, T]`` masks of the positions a regularizer sees under ``mode``."""
        if mode == "response":
            return self.response_chosen & self.attention_chosen, self.response_rejected & self.attention_rejected
        if mode == "sequence":
            return self.attention_chosen, self.attention_rejected
        if mode == "none":
            return torch.ones_like(self.attention_chosen), torch.ones_like(self.attention_rejected)
        raise ValueError(f"unknown mask mode {mode!r}; known modes: {', '.join(MASK_MODES)}")


@dataclass(frozen=True)
class UnpairedLatentBatch(LatentBatch):
    """A :class:`LatentBatch` whose sides are unpaired (online RL): they may differ in size or be
    empty, and a row that selects no position leaves its own side only."""

    paired: ClassVar[bool] = False


def prompt_completion_masks(prompt_mask: Tensor, completion_mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """The attention and response masks ``[N, length]`` of sequences laid out as a (left-padded)
    prompt then a completion, for hidden states of ``length`` positions: a host that truncates
    prompts on the left to its maximum length keeps the last ``length − Tc`` prompt positions."""
    kept = length - completion_mask.shape[1]
    if not 0 <= kept <= prompt_mask.shape[1]:
        raise RuntimeError(
            f"hidden states of length {length} do not cover prompt {prompt_mask.shape[1]} + completion "
            f"{completion_mask.shape[1]} tokens (vision inputs or virtual tokens are not supported): the regularizer "
            "needs one hidden state per input token"
        )
    prompt, completion = prompt_mask[:, prompt_mask.shape[1] - kept :].bool(), completion_mask.bool()
    return torch.cat((prompt, completion), 1), torch.cat((torch.zeros_like(prompt), completion), 1)


def _shape_error(name: str, tensor: Tensor, hidden_name: str, hidden: Tensor) -> str:
    return (
        f"LatentBatch: {name} has shape {list(tensor.shape)} but {hidden_name} has shape {list(hidden.shape)}; "
        f"hidden states must be [B, T, H] and masks [B, T] = {list(hidden.shape[:2])}: pass the masks of the "
        "forward the hidden states were captured from"
    )


def _check_mask(name: str, mask: Tensor, hidden_name: str, hidden: Tensor) -> None:
    if mask.shape != hidden.shape[:2]:
        raise ValueError(_shape_error(name, mask, hidden_name, hidden))


@dataclass(frozen=True)
class StepInfo:
    """Where the host is in its optimisation when a micro-batch arrives.

    ``is_boundary`` is true on the micro-step after which the host steps its optimiser;
    ``accumulation_steps`` is what the host divides each micro-step's loss by.
    """

    is_boundary: bool = True
    accumulation_steps: int = 1

    def __post_init__(self) -> None:
        if not self.accumulation_steps >= 1:
            raise ValueError(
                f"StepInfo.accumulation_steps must be >= 1 (the host's gradient accumulation steps, what it "
                f"divides each micro-step's loss by), got {self.accumulation_steps!r}"
            )


@dataclass
class RegularizerOutput:
    """The weighted term added to the policy loss, and scalar metrics (unprefixed names)."""

    loss: Tensor
    metrics: Metrics = field(default_factory=dict)


@dataclass(frozen=True)
class RegularizerContext:
    """What a regularizer factory learns from the host when it is built.

    ``process_group``: the data-parallel group to reduce over (``None``: the default group
    when ``torch.distributed`` is initialised, else no reduction). ``components``: the registered
    objects the config names, keyed as its ``registered_names()`` (``"discriminator.kind"``),
    resolved by the plugins layer that builds the regularizer
    (:func:`~ganpo_plugins.plugins.build.build_regularizer`); a regularizer never looks a name up itself.
    """

    hidden_size: int
    policy_lr: float
    total_steps: int
    warmup_steps: int = 0
    accumulation_steps: int = 1
    ref_hidden_size: int | None = None
    device: torch.device | str = "cpu"
    seed: int = 0
    process_group: Any = None
    components: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class LatentRegularizer(Protocol):
    """A regularizer on last-layer hidden states of policy and reference.

    Contract:
    - ``mask`` names the positions it sees (:data:`MaskMode`); callers zero the latents
      elsewhere before each call.
    - ``update`` is called once per training micro-step, before ``policy_term``; it learns
      whatever the regularizer learns (its own parameters only: it must detach the policy
      latents), accumulates gradients scaled by ``1 / info.accumulation_steps``, steps its own
      optimiser when ``info.is_boundary``, and keeps every rank of its process group identical.
      :class:`~ganpo_plugins.regularizers.learned.LearnedRegularizer` does all of that for a subclass.
    - ``policy_term`` returns the already-weighted term to add to the policy loss; its gradient
      reaches the policy only through ``policy_*`` latents, never the reference latents or the
      regularizer's parameters. Adapters also call it under ``torch.no_grad()`` in evaluation
      (no ``update`` there), which must leave the state unchanged.
    - A batch's two sides may differ in size (online RL). A batch with an empty side (no row with
      a selected position) still reaches ``update`` (so a learned regularizer steps at the boundary
      and joins its collectives) and must learn nothing from it; the runner then calls no
      ``policy_term`` and adds no term (:meth:`~ganpo_plugins.runner.RegularizerRunner.step`).
    - ``state_dict``/``load_state_dict`` round-trip everything needed to continue identically;
      the state holds only tensors and plain Python values (it is loaded with
      ``torch.load(weights_only=True)``). Optional ``rank_local_keys``: the keys of that state
      which differ between data-parallel ranks (a random stream); checkpoints keep them per rank.

    Its factory (usually the class) is called as ``factory(config, context)`` with ``config`` an
    instance of the factory's ``config_model`` (:mod:`ganpo_plugins.config`).
    """

    mask: MaskMode

    def update(self, batch: LatentBatch, info: StepInfo) -> Metrics: ...

    def policy_term(self, batch: LatentBatch) -> RegularizerOutput: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...
