"""Test-only import stub for ``flash_attn`` (CPU runs of OpenRLHF; never installed).

OpenRLHF 0.11.2 imports ``flash_attn.bert_padding`` and ``flash_attn.utils.distributed`` at
module level (``openrlhf.models.ring_attn_utils``) although only sample packing and ring
attention use them; both are refused by the adapter on CPU, so the functions here only fail
loudly if something calls them.
"""

__version__ = "0.0.0+cpu-test-stub"


def unavailable(name: str):
    def fn(*args, **kwargs):
        raise NotImplementedError(f"flash_attn.{name} is a CPU test stub: packing/ring attention need real flash-attn")

    fn.__name__ = name.rsplit(".", 1)[-1]
    return fn
