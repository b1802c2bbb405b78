""":func:`ganpo_plugins.adapter_kit.launch.run_host_cli` on a tiny argparse host CLI written here (the OpenRLHF
launchers use it on the real one: tests/host_openrlhf). Each run is a subprocess: the swaps last
for the process, as they do for a launcher."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HOST_CLI = """
if __name__ == "__main__":
    import argparse, json
    from fakehost import config
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--packing", action="store_true")
    parser.add_argument("--out")
    args = config.hierarchize(parser.parse_args())
    from fakehost.trainer import Trainer  # imported by name when the CLI runs, as OpenRLHF's does
    with open(args.out, "w") as f:
        json.dump({"lr": args.lr, "trainer": Trainer.name, "weight": args.ganpo.weight}, f)
"""

LAUNCHER = """
import sys
from ganpo_plugins import GANPOConfig, parse_config
from ganpo_plugins.adapter_kit.launch import run_host_cli

def check(args):
    if args.packing:
        raise ValueError("--packing=true: no per-pair hidden states; remove --packing")

run_host_cli(
    prog="launch", module="fakehost.cli", argv=None, prefix="--ganpo", model=GANPOConfig, parse=parse_config,
    title="GANPO flags", hosts=tuple(h for h in sys.argv.pop(1).split(",") if h),
    swaps={"fakehost.trainer:Trainer": "ours:OurTrainer"}, args_hook="fakehost.config:hierarchize",
    attach_as="ganpo", check=check,
)
"""


@pytest.fixture
def launch(tmp_path: Path):
    package = tmp_path / "fakehost"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "config.py").write_text("def hierarchize(args):\n    return args\n")
    (package / "trainer.py").write_text("class Trainer:\n    name = 'host'\n")
    (package / "cli.py").write_text(textwrap.dedent(HOST_CLI))
    (tmp_path / "ours.py").write_text("class OurTrainer:\n    name = 'ours'\n")
    (tmp_path / "launch.py").write_text(textwrap.dedent(LAUNCHER))

    def run(*flags: str, hosts: str = "") -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(tmp_path / "launch.py"), hosts, "--out", str(tmp_path / "out.json"), *flags]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    return run


def test_the_host_cli_runs_with_our_class_and_our_config(launch, tmp_path: Path) -> None:
    result = launch("--lr", "0.5", "--ganpo.weight", "0.25")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out.json").read_text()) == {"lr": 0.5, "trainer": "ours", "weight": 0.25}


@pytest.mark.parametrize(
    ("flags", "hosts", "message"),
    [
        (("--ganpo.wieght", "1"), "", "launch: error: invalid regularizer configuration"),
        (("--packing",), "", "launch: error: the flags do not fit together: --packing=true"),
        ((), "openrlhf", "launch: error: openrlhf is not installed"),
    ],
)
def test_bad_input_stops_like_argparse_before_the_host_runs(launch, tmp_path: Path, flags, hosts, message) -> None:
    result = launch(*flags, hosts=hosts)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "out.json").exists()
