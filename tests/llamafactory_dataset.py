"""LLaMA-Factory datasets as its users declare them: a ``dataset_dir`` whose ``dataset_info.json`` names
a jsonl file of preference pairs (``prompt``, ``chosen``, ``rejected``) as a ranking dataset."""

from __future__ import annotations

import json
from pathlib import Path


def write_ranking_dataset(folder: Path, name: str, pairs: Path) -> Path:
    """``folder`` as a ``dataset_dir`` naming ``pairs`` as the ranking dataset ``name``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
    info = {name: {"file_name": str(pairs), "ranking": True, "columns": columns}}
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return folder
