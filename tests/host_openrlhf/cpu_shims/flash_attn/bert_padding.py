"""Stub of ``flash_attn.bert_padding`` (see the package docstring)."""

from einops import rearrange

from . import unavailable

index_first_axis = unavailable("bert_padding.index_first_axis")
pad_input = unavailable("bert_padding.pad_input")
unpad_input = unavailable("bert_padding.unpad_input")

__all__ = ["index_first_axis", "pad_input", "rearrange", "unpad_input"]
