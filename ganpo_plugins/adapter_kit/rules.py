"""The rules between a host run's settings and a regularizer config, written once for every host.

Each adapter reports the facts of its run as a :class:`HostFacts` — read off a live trainer (TRL),
off an Axolotl config before any model loads, off OpenRLHF's parsed flags — with the spelling of
each setting in the user's own config (``keys``; ``style`` says how a fix is written there).
:func:`check_host` returns who computes the base preference loss, or raises one ``ValueError``
listing every conflict, each naming the user's key, its value and the fix.

Base loss (``preference_loss``): unset, the host's own loss; a kind the host computes with the same
formula (``equivalents``, e.g. TRL DPO ``sigmoid`` ≡ ``logistic``), the host computes it; any other
kind, the adapter computes it (:mod:`ganpo_plugins.formulas.preference`) on the host's log-probabilities.
TRL's ``ipo`` (per-token-averaged log-ratios) is not ``squared`` (summed): never substituted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import RegularizerConfig

__all__ = ["BaseLoss", "HostFacts", "check_host"]


@dataclass(frozen=True)
class BaseLoss:
    """Who computes the base loss: the host with ``host_loss_type`` (the adapter sets it on the
    trainer), the adapter with ``loss`` (a registered preference loss), or (both ``None``) the
    host as configured."""

    host_loss_type: str | None = None
    loss: Any = None  # a ganpo_plugins.formulas.preference.PreferenceLoss

    def describe(self, host: str) -> str:
        """Who computes it, for the ON line (``host``: the host's name, ``TRL``)."""
        if self.loss is not None:
            return f"{self.loss.name} (computed by ganpo_plugins from the host's own forwards)"
        if self.host_loss_type is not None:
            return f"{host}'s loss_type={self.host_loss_type!r}, the same formula (computed by {host})"
        return f"the trainer's own (computed by {host})"


@dataclass(frozen=True)
class HostFacts:
    """What an adapter reports about one host run. Fact names are the keys of ``keys``."""

    style: Literal["yaml", "flags", "args"]
    keys: Mapping[str, str] = field(default_factory=dict)
    reference_free: bool = False  # SimPO/CPO: the trainer computes no reference log-probabilities
    loss_types: tuple[str, ...] = ("sigmoid",)
    default_loss_types: tuple[str, ...] = ("sigmoid",)
    loss_weights: tuple[float, ...] | None = None
    equivalents: Mapping[str, str] = field(default_factory=dict)
    simpo_gamma: float | None = None  # the host's SimPO margin, where it has one
    # Settings that change the host's loss or log-probabilities: {fact: (value, its neutral value)}.
    loss_modifiers: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    router_aux_loss: bool = False
    packing: bool = False
    sequence_parallel: int = 1
    fused_loss: bool = False
    vision: bool = False
    encoder_decoder: bool = False
    meta_reference: bool = False  # some rank loads the reference the adapter runs without weights
    sharded_precompute: bool = False  # the host's precompute pass hashes a sharded reference

    def ours(self, key: str) -> str:
        """A regularizer config key as the user writes it (``ganpo.x``, ``--ganpo.x``)."""
        return f"--ganpo.{key}" if self.style == "flags" else f"ganpo.{key}"

    def key(self, fact: str) -> str:
        return self.keys.get(fact, fact)

    def off(self, fact: str) -> str:
        """How to turn a switch off, in the user's config."""
        if self.style == "flags":
            return f"remove {self.key(fact)}"
        return f"set {self.key(fact)}: false" if self.style == "yaml" else f"set {self.key(fact)}=False"

    def set(self, fact: str, value: Any) -> str:
        if self.style == "flags":
            return f"use {self.key(fact)} {value}"
        return f"set {self.key(fact)}: {value}" if self.style == "yaml" else f"set {self.key(fact)}={value!r}"


def check_host(facts: HostFacts, config: RegularizerConfig) -> BaseLoss:
    """Who computes the base loss of this run; ``ValueError`` listing every conflict."""
    problems = _problems(facts, config)
    if problems:
        raise ValueError("; ".join(problems))
    pref = config.preference_loss
    if pref is None:
        return BaseLoss()
    if pref in facts.equivalents:
        return BaseLoss(host_loss_type=facts.equivalents[pref])
    from ..plugins.registry import resolve

    return BaseLoss(loss=resolve("preference_loss", pref))


def _problems(f: HostFacts, config: RegularizerConfig) -> list[str]:
    k = f.key
    P, G = f.ours("preference_loss"), f.ours("simpo_gamma")
    out: list[str] = []
    if f.fused_loss:
        out.append(
            f"{k('fused_loss')}=true: the Liger fused DPO loss never materialises the final hidden states the "
            f"regularizer reads; {f.off('fused_loss')}"
        )
    if f.packing:
        out.append(
            f"{k('packing')}=true: packed sequences share hidden-state rows, so there are no per-pair hidden states; "
            f"{f.off('packing')}"
        )
    if f.sequence_parallel > 1:
        out.append(
            f"{k('sequence_parallel')}={f.sequence_parallel} (> 1) splits every sequence's hidden states over ranks, "
            f"but the regularizer needs whole sequences; {f.set('sequence_parallel', 1)}"
        )
    if f.vision:
        out.append("vision datasets are not supported by the regularizer adapters yet; use a text-only dataset")
    if f.encoder_decoder:
        out.append("encoder-decoder models are not supported: the regularizer reads a decoder-only model's states")
    if f.meta_reference:
        out.append(
            f"{k('meta_reference')}=true: ranks other than 0 load the reference the adapter runs (the second model "
            f"loaded for SimPO) on the meta device, without weights; {f.off('meta_reference')}"
        )
    if f.sharded_precompute:
        out.append(
            f"{k('sharded_precompute')}=true with a sharded reference model: TRL's precompute pass hashes the sharded "
            f"weights (DTensor.numpy()) and fails before training; {f.off('sharded_precompute')} (with a regularizer "
            "the reference forward runs anyway, so precomputing saves nothing)"
        )
    if f.reference_free and f.loss_types == ("simpo",) and f.simpo_gamma is None:
        out.append(
            f"{k('loss_types')}=simpo needs SimPO's target margin γ, which is unset (TRL would fail dividing it by β "
            f"at the first step); set {k('simpo_gamma')}, e.g. {k('simpo_gamma')}: 0.5"
        )
    pref, gamma = config.preference_loss, config.simpo_gamma
    if gamma is not None and pref != "simpo":
        out.append(
            f"{G}={gamma}: only {P} simpo reads it (preference_loss is {pref!r}); remove {G} or set {P} to simpo"
        )
    if pref is None:
        return out
    for fact, (value, neutral) in f.loss_modifiers.items():
        if value != neutral:
            fix = f.off(fact) if neutral is False else f.set(fact, neutral)
            out.append(
                f"{k(fact)}={value} changes the base loss or the log-probabilities {P}={pref!r} is defined on; "
                f"{fix}, or unset {P}"
            )
    if f.reference_free:
        if pref != "simpo":
            out.append(
                f"{P}={pref!r} needs reference log-probabilities, which a SimPO/CPO trainer never "
                f"computes; use a DPO trainer for reference-based GPO losses, or {P} simpo"
            )
        if f.loss_types != ("simpo",):
            out.append(
                f"{P}='simpo' but the trainer's {k('loss_types')}={f.loss_types[0]!r}; "
                f"{f.set('loss_types', 'simpo')} or leave {P} unset"
            )
        if gamma is not None and gamma != f.simpo_gamma:
            out.append(
                f"{G}={gamma} differs from the trainer's {k('simpo_gamma')}={f.simpo_gamma}; set the "
                f"SimPO margin once, in {k('simpo_gamma')}"
            )
        return out
    mapped = f.equivalents.get(pref)
    if f.loss_types not in (f.default_loss_types, (mapped,)) or f.loss_weights not in (None, (1.0,)):
        out.append(
            f"{P}={pref!r} and the trainer's {k('loss_types')}={list(f.loss_types)} both choose the "
            f"base loss; remove {k('loss_types')} or {P}"
        )
    if mapped is None and f.router_aux_loss:
        out.append(
            f"{P}={pref!r} replaces the trainer's loss, which here includes the MoE router auxiliary "
            f"loss; {f.set('router_aux_loss', 0)} or leave {P} unset"
        )
    if pref == "simpo" and gamma is None:
        out.append(f"{P}='simpo' on a DPO trainer needs the margin: set {G}")
    return out
