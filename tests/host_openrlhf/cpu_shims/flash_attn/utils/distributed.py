"""Stub of ``flash_attn.utils.distributed`` (see the package docstring)."""

from .. import unavailable

all_gather = unavailable("utils.distributed.all_gather")
