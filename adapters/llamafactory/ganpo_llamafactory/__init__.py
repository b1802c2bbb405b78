"""LLaMA-Factory adapter of ganpo-plugins: a ``ganpo:`` block in a LLaMA-Factory ``stage: dpo`` config,
run with ``ganpo-llamafactory-cli train CONFIG.yaml`` (a drop-in for ``llamafactory-cli train``) or
:func:`run_exp` (a drop-in for ``llamafactory.train.tuner.run_exp``), adds a latent regularizer to
LLaMA-Factory's DPO, IPO, hinge, SimPO and ORPO losses, or a GPO loss the package computes."""

from .cli import run_exp

__all__ = ["run_exp"]
