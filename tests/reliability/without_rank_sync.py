"""``without_rank_sync.py SCRIPT ARGS...`` (as torchrun's worker script): run SCRIPT with the
regularizer's cross-rank sync switched off (gradient averaging, the μ statistics' all-reduce and the
drift re-sync become single-rank no-ops): the control run of test_trl_two_process.py, showing that
ranks training on different pairs do diverge without it."""

from __future__ import annotations

import runpy
import sys
from typing import Any

from ganpo_plugins.regularizers import ganpo, learned


def _unreduced(tensor: Any, group: Any) -> Any:
    return tensor


learned.average_gradients = lambda params, group: None
learned.all_reduce_sum = ganpo.all_reduce_sum = _unreduced
learned.resync_if_diverged = lambda tensors, group: False

if __name__ == "__main__":
    script, *args = sys.argv[1:]
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")
