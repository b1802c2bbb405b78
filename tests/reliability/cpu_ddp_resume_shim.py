"""``python cpu_ddp_resume_shim.py SCRIPT ARGS...``: run SCRIPT with ``torch.load`` accepting the
map location ``cpu:N``. Test scaffolding for CPU only: transformers' ``Trainer`` reloads the
optimizer of a multi-process run with ``map_location=args.device``, which is ``cpu:0`` under
``use_cpu`` (``cuda:N`` on GPUs), and torch has no deserializer for ``cpu:0``."""

import runpy
import sys

import torch


def _cpu_with_index(storage: object, location: str) -> object | None:
    return storage if location.startswith("cpu:") else None


torch.serialization.register_package(11, lambda storage: None, _cpu_with_index)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
