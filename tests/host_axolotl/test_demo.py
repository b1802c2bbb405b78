"""The README's main demo (``tox -e demo``): its exact commands, run in a scratch folder; then the
documented follow-ups on its output (the ``<!-- ci: demo -->`` transcripts of docs/demo.md), and
the demo by hand in docs/demo.md checked against the commands tox runs."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("axolotl.cli", reason="needs Axolotl: tox -e axolotl-oldest")

from docs.test_documented_commands import demo_blocks

REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / "examples/axolotl/tiny_dpo_ganpo.yml").read_text())
RUN = Path(CONFIG["output_dir"])


def tox_section(name: str) -> configparser.SectionProxy:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(REPO / "tox.ini")
    return tox[name]


def demo_commands() -> list[str]:
    return [line.strip() for line in tox_section("testenv:demo")["commands"].splitlines() if line.strip()]


def transcript(text: str) -> list[tuple[str, list[str]]]:
    """``$ command`` lines of a console block, each with the output lines written under it."""
    steps: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif line.strip() and steps:
            steps[-1][1].append(line.strip())
    return steps


def test_the_demo_by_hand_is_what_tox_runs() -> None:
    by_hand = [block for block in demo_blocks() if block.lang == "bash"]
    assert len(by_hand) == 1, "docs/demo.md shows the demo by hand in one `<!-- ci: demo -->` bash block"
    lines = [line.split(" #")[0].strip() for line in by_hand[0].text.replace("\\\n", " ").splitlines()]
    exports = [line for line in lines if line.startswith("export ")]
    assert [line for line in lines if line and not line.startswith(("export ", "#"))] == demo_commands()
    setenv_lines = tox_section("testenv")["setenv"].splitlines()
    assert "file|{toxinidir}/offline.env" in [line.strip() for line in setenv_lines]  # tox reads the file
    setenv = dict(
        re.split(r"\s*=\s*", line.strip(), maxsplit=1)
        for line in [*setenv_lines, *(REPO / "offline.env").read_text().splitlines()]
        if "=" in line and not line.strip().startswith("#")
    )
    exported = dict(item.split("=", 1) for line in exports for item in shlex.split(line)[1:])
    assert exported and all(setenv.get(name) == value for name, value in exported.items()), (exported, setenv)


def test_demo_commands_run_show_ganpo_metrics_and_end_with_the_summary(
    tmp_path: Path, host_env: dict[str, str]
) -> None:
    commands = [shlex.split(line) for line in demo_commands()]
    assert [cmd[:3] for cmd in commands[1:]] == [
        ["axolotl", "train", "examples/axolotl/tiny_dpo_ganpo.yml"],
        ["python", "examples/axolotl/show_metrics.py", str(RUN)],
        ["python", "-m", "ganpo_plugins.plot"],
    ]
    (tmp_path / "examples").symlink_to(REPO / "examples")  # the commands use repo-relative paths
    bin_dir = Path(sys.executable).parent  # as in the tox env: its python and console scripts first
    env = {**host_env, "PATH": f"{bin_dir}{os.pathsep}{host_env.get('PATH', '')}"}
    outputs = []
    for cmd in commands:
        result = subprocess.run(
            [sys.executable if cmd[0] == "python" else str(bin_dir / cmd[0]), *cmd[1:]],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout[-6000:]
        outputs.append(result.stdout)
    train, table = outputs[1], outputs[2]

    # The run ends with the closing summary: the ON line again, then the discriminators' last log.
    lines = train.splitlines()
    on_lines = [i for i, line in enumerate(lines) if "ganpo regularizer ON" in line]
    steps = CONFIG["max_steps"]
    summary = [
        i for i, line in enumerate(lines) if line.startswith(f"ganpo: run summary at the last log (step {steps})")
    ]
    last_log = max(i for i, line in enumerate(lines) if "'ganpo/adv_loss'" in line)
    assert len(on_lines) == 2 and len(summary) == 1, train[-4000:]
    assert last_log < on_lines[1] == summary[0] - 1, train[-4000:]
    state = json.loads(max((tmp_path / RUN).glob("checkpoint-*/trainer_state.json")).read_text())
    final = [entry for entry in state["log_history"] if "ganpo/d_pos/accuracy" in entry][-1]
    assert f"D+ accuracy {final['ganpo/d_pos/accuracy']:.3f}" in lines[summary[0]]
    micro_steps = steps * CONFIG["gradient_accumulation_steps"]
    assert (
        f"skipped in {micro_steps} training micro-steps of this process: 0 discriminator updates" in lines[summary[0]]
    )

    # The table shows the saturation counters beside the accuracies; the state file is everywhere.
    header = table.splitlines()[0].split()
    assert {"D+_acc", "D-_acc", "D+_sat", "D-_sat", "skipped"} <= set(header)
    assert table.count("ganpo_regularizer.pt: present") == 1 + len(list((tmp_path / RUN).glob("checkpoint-*")))
    last_row = next(line.split() for line in table.splitlines() if line.split()[:1] == [str(steps)])
    for name, key in (("D-_sat", "ganpo/d_neg/saturated_steps"), ("D+_acc", "ganpo/d_pos/accuracy")):
        assert float(last_row[header.index(name)]) == pytest.approx(final[key], abs=1e-4)

    # The demo drew its picture into the run's folder.
    assert (tmp_path / RUN / "ganpo_curves.png").stat().st_size > 10_000

    # The documented follow-ups on the demo's own output run as written and print what the docs show.
    transcripts = [block for block in demo_blocks() if block.lang == "console"]
    assert transcripts, "docs/demo.md has no `<!-- ci: demo -->` transcript"
    for block in transcripts:
        for command, expected in transcript(block.text):
            result = subprocess.run(
                ["bash", "-c", command],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=600,
            )
            shown = [line.strip() for line in result.stdout.splitlines()]
            missing = [line for line in expected if line not in shown]
            assert not missing, f"{block.where}: `{command}` printed\n{result.stdout[-3000:]}\nnot {missing}"
            assert (result.returncode != 0) == any(line.startswith("error:") for line in expected), result.stdout
