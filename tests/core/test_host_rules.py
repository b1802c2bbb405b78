"""The host rules, written once (:mod:`ganpo_plugins.adapter_kit.rules`), over the facts each adapter reports.

Each row gives facts as an adapter would report them and the fragments the one error must hold;
the same rule speaks each host's spelling (``args``: TRL keyword arguments, ``yaml``: an Axolotl
config, ``flags``: OpenRLHF's command line). The adapters' own tests check that each reports the
facts of a real run (tests/host_*)."""

# ruff: noqa: E501  (the table reads best one case per row)

from __future__ import annotations

from typing import Any

import pytest

from ganpo_plugins import parse_config
from ganpo_plugins.adapter_kit.rules import HostFacts, check_host

AXOLOTL_DPO = {"style": "yaml", "keys": {"loss_types": "rl", "packing": "sample_packing"}}
OPENRLHF = {"style": "flags", "keys": {"packing": "--ds.packing_samples", "sequence_parallel": "--ds.ring_attn_size"}}
CPO = {"style": "args", "reference_free": True, "loss_types": ("simpo",), "simpo_gamma": 0.5, "keys": {}}

REFUSED = [
    ({"style": "args", "fused_loss": True, "keys": {"fused_loss": "use_liger_kernel"}}, {},
     ["use_liger_kernel=true", "never materialises the final hidden states", "set use_liger_kernel=False"]),
    ({**AXOLOTL_DPO, "packing": True}, {}, ["sample_packing=true", "no per-pair hidden states", "set sample_packing: false"]),
    ({**OPENRLHF, "packing": True}, {}, ["--ds.packing_samples=true", "remove --ds.packing_samples"]),
    ({**OPENRLHF, "sequence_parallel": 2}, {}, ["--ds.ring_attn_size=2 (> 1)", "use --ds.ring_attn_size 1"]),
    ({**AXOLOTL_DPO, "loss_types": ("ipo",)}, {"preference_loss": "savage"},
     ["ganpo.preference_loss='savage' and the trainer's rl=['ipo'] both choose the base loss", "remove rl"]),
    ({"style": "args", "loss_types": ("sigmoid", "sft")}, {"preference_loss": "logistic"}, ["both choose the base loss"]),
    ({"style": "args", "loss_weights": (0.5,)}, {"preference_loss": "hinge"}, ["both choose the base loss"]),
    ({**OPENRLHF, "loss_modifiers": {"ipo": (True, False)}, "keys": {"ipo": "--model.ipo_enable"}},
     {"preference_loss": "squared"}, ["--model.ipo_enable=True changes the base loss", "--ganpo.preference_loss='squared'", "remove --model.ipo_enable"]),
    ({"style": "args", "loss_modifiers": {"ld_alpha": (0.5, None)}}, {"preference_loss": "hinge"}, ["ld_alpha=0.5 changes", "set ld_alpha=None"]),
    ({"style": "args", "router_aux_loss": True, "keys": {"router_aux_loss": "router_aux_loss_coef"}},
     {"preference_loss": "savage"}, ["MoE router auxiliary loss", "set router_aux_loss_coef=0"]),
    ({"style": "args"}, {"preference_loss": "simpo"}, ["ganpo.preference_loss='simpo' on a DPO trainer needs the margin"]),
    ({**OPENRLHF}, {"preference_loss": "simpo"}, ["needs the margin: set --ganpo.simpo_gamma"]),
    ({"style": "yaml"}, {"simpo_gamma": 0.5}, ["ganpo.simpo_gamma=0.5: only ganpo.preference_loss simpo reads it"]),
    ({**CPO}, {"preference_loss": "squared"}, ["needs reference log-probabilities", "SimPO/CPO trainer never computes"]),
    ({**CPO, "loss_types": ("sigmoid",)}, {"preference_loss": "simpo"},
     ["loss_types='sigmoid'", "set loss_types='simpo'"]),
    ({**CPO}, {"preference_loss": "simpo", "simpo_gamma": 1.0}, ["ganpo.simpo_gamma=1.0 differs", "simpo_gamma=0.5"]),
    ({**CPO, "loss_modifiers": {"cpo_alpha": (1.0, 0.0)}}, {"preference_loss": "simpo"}, ["cpo_alpha=1.0 changes the base loss", "set cpo_alpha=0.0"]),
    ({"style": "yaml", "loss_modifiers": {"dpo_label_smoothing": (0.1, 0.0)}}, {"preference_loss": "logistic"}, ["dpo_label_smoothing=0.1 changes", "set dpo_label_smoothing: 0.0"]),
    ({**CPO, "simpo_gamma": None, "keys": {"loss_types": "rl", "simpo_gamma": "simpo_gamma"}}, {},
     ["rl=simpo needs SimPO's target margin γ, which is unset", "set simpo_gamma, e.g. simpo_gamma: 0.5"]),
    ({"style": "yaml", "meta_reference": True, "keys": {"meta_reference": "fsdp_config.cpu_ram_efficient_loading"}},
     {}, ["fsdp_config.cpu_ram_efficient_loading=true", "meta device", "set fsdp_config.cpu_ram_efficient_loading: false"]),
    ({"style": "yaml", "sharded_precompute": True, "keys": {"sharded_precompute": "precompute_ref_log_probs"}}, {},
     ["precompute_ref_log_probs=true with a sharded reference", "DTensor.numpy()"]),
    ({"style": "args", "vision": True}, {}, ["vision datasets are not supported"]),
    ({"style": "args", "encoder_decoder": True}, {}, ["encoder-decoder models are not supported"]),
]  # fmt: skip


@pytest.mark.parametrize(("facts", "config", "fragments"), REFUSED)
def test_each_conflict_is_refused_in_the_hosts_own_spelling(
    facts: dict[str, Any], config: dict[str, Any], fragments: list[str]
) -> None:
    with pytest.raises(ValueError) as caught:
        check_host(HostFacts(**facts), parse_config(config))
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_every_conflict_is_listed_in_one_error() -> None:
    facts = HostFacts(**{**OPENRLHF, "packing": True, "sequence_parallel": 4})
    with pytest.raises(ValueError) as caught:
        check_host(facts, parse_config({"preference_loss": "simpo"}))
    message = str(caught.value)
    assert all(k in message for k in ("--ds.packing_samples", "--ds.ring_attn_size", "--ganpo.simpo_gamma"))


@pytest.mark.parametrize(
    ("facts", "pref", "host_loss", "ours"),
    [
        ({"equivalents": {"logistic": "sigmoid", "hinge": "hinge"}}, None, None, None),
        ({"equivalents": {"logistic": "sigmoid", "hinge": "hinge"}}, "logistic", "sigmoid", None),
        ({"equivalents": {"logistic": "sigmoid", "hinge": "hinge"}}, "hinge", "hinge", None),
        ({"equivalents": {"logistic": "sigmoid", "hinge": "hinge"}}, "squared", None, "squared"),
        ({}, "logistic", None, "logistic"),  # OpenRLHF: no equivalents declared, the package computes it
        ({**CPO, "equivalents": {"simpo": "simpo"}}, "simpo", "simpo", None),
    ],
)
def test_the_host_computes_the_base_loss_only_where_it_declares_the_same_formula(
    facts: dict[str, Any], pref: str | None, host_loss: str | None, ours: str | None
) -> None:
    base = check_host(HostFacts(**{"style": "args", **facts}), parse_config({"preference_loss": pref}))
    assert base.host_loss_type == host_loss
    assert (base.loss.name if base.loss is not None else None) == ours
