"""``python count_config_parses.py cfg.yml``: ``python -m axolotl.cli.train cfg.yml`` unchanged, with
every call of ``ganpo_plugins.plugins.parse.parse_config`` counted (the one parser of a regularizer
config; each call enters the registry) and the count printed at exit as ``ganpo config parses: N``.
Test instrumentation only: it wraps the function before anything imports it and changes nothing else."""

import atexit
import runpy
import sys

from ganpo_plugins.plugins import parse

calls = []
parse_config = parse.parse_config


def counted(*args, **kwargs):
    calls.append(args[0] if args else kwargs.get("data"))
    return parse_config(*args, **kwargs)


parse.parse_config = counted
atexit.register(lambda: print(f"ganpo config parses: {len(calls)}", flush=True))
sys.argv = ["axolotl.cli.train", *sys.argv[1:]]
runpy.run_module("axolotl.cli.train", run_name="__main__", alter_sys=True)
