"""The documented shell commands that fit in CI, run as written, so the docs cannot rot.

A fenced shell block in ``README.md``, ``docs/*.md`` or ``examples/*/README.md`` is run by CI when
an HTML comment right before it names the tox envs it runs in::

    <!-- ci: trl-oldest -->
    ```bash
    python examples/tiny/make_tiny_assets.py --out outputs/tiny
    ```

The blocks for the current env (``GANPO_TOX_ENV``, set per env in tox.ini) are collected, one test
per document: its marked blocks in document order, as one bash script each (``set -e``), in one
scratch copy of the repository (the commands are written "from the repository root"), with this
interpreter's ``bin`` first on ``PATH`` so ``python`` and the console scripts are the env's own. One
translation keeps a run from changing the env: ``pip install ARGS`` runs as
``pip install --dry-run ARGS`` (it resolves against the env and builds the editable metadata
without installing anything).

``<!-- ci: demo -->`` marks what tests/host_axolotl/test_demo.py checks after running the demo's
own commands (tox.ini ``[testenv:demo]``): a ``bash`` block is the demo by hand and must equal
those commands; a ``console`` block is a transcript (``$ command`` lines, each followed by lines
its output must contain) run in the folder the demo ran in.

Blocks for other envs are not collected (not skipped: GANPO_FORBID_SKIPS=1 fails skips). The marker
check below is always collected: every marker names an env of tox.ini's envlist (or ``demo``) and
stands right before a shell block without ``tox`` in it (tox inside tox is not run here;
test_fresh_tox_env.py checks the documented tox commands).
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV_VAR = "GANPO_TOX_ENV"
MARKER = re.compile(r"^\s*<!--\s*ci:\s*(?P<envs>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>`{3,})\s*(?P<lang>[\w-]*)\s*$")
SHELL_LANGS = {"bash", "sh", "shell"}
DEMO = "demo"  # the marker of what test_demo.py runs after the demo (not an envlist env)
PIP_INSTALL = re.compile(r"\bpip3?(\s+)install\b")
TIMEOUT_S = 900


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted(REPO.glob("docs/*.md")), *sorted(REPO.glob("examples/*/README.md"))]


def tox_envs() -> list[str]:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(REPO / "tox.ini")
    return [env.strip() for env in tox["tox"]["envlist"].replace("\n", ",").split(",") if env.strip()]


@dataclass(frozen=True)
class Block:
    doc: str  # repository-relative path of the document
    line: int  # 1-based line of the marker
    envs: tuple[str, ...]
    lang: str | None  # the fence's language; None: no fence right after the marker
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def marked_blocks(path: Path) -> list[Block]:
    """Every ``<!-- ci: ... -->`` marker of ``path`` with the fenced block right after it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    doc = path.relative_to(REPO).as_posix()
    blocks = []
    for i, line in enumerate(lines):
        marker = MARKER.match(line)
        if not marker:
            continue
        envs = tuple(env for env in re.split(r"[\s,]+", marker["envs"]) if env)
        fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if fence is None:
            blocks.append(Block(doc, i + 1, envs, None, ""))
            continue
        body = []
        for inner in lines[i + 2 :]:
            if inner.strip() == fence["ticks"]:
                break
            body.append(inner[len(fence["indent"]) :] if inner.startswith(fence["indent"]) else inner)
        blocks.append(Block(doc, i + 1, envs, fence["lang"], "\n".join(body) + "\n"))
    return blocks


ALL_BLOCKS = [block for path in doc_files() for block in marked_blocks(path)]
CURRENT_ENV = os.environ.get(ENV_VAR, "")
DOCS_HERE = sorted({block.doc for block in ALL_BLOCKS if CURRENT_ENV in block.envs})


def split_comment(line: str) -> tuple[str, str]:
    """``line`` as (command, ``# comment``): the first ``#`` outside quotes that starts a word."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i:]
    return line, ""


def runnable(block: Block) -> str:
    """The block as the script CI runs: pip installs dry."""
    lines = []
    for line in block.text.splitlines():
        command, comment = split_comment(line)
        lines.append(PIP_INSTALL.sub(lambda m: f"pip{m[1]}install --dry-run", command) + comment)
    return "\n".join(lines) + "\n"


def demo_blocks() -> list[Block]:
    """The blocks marked ``demo`` (test_demo.py runs them)."""
    return [block for block in ALL_BLOCKS if DEMO in block.envs]


def copy_repository(dest: Path) -> None:
    """The working tree's files (tracked and untracked-but-not-ignored; without git: everything
    but the usual build and output folders) into ``dest``."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        ignore = shutil.ignore_patterns(".git", ".tox", "outputs", "build", "*.egg-info", "__pycache__", ".venv")
        shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
        return
    for name in filter(None, listed.decode().split("\0")):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def test_ci_markers_name_known_envs_and_precede_a_shell_block() -> None:
    known = tox_envs()
    assert CURRENT_ENV in ("", *known), f"{ENV_VAR}={CURRENT_ENV!r} is not an env of tox.ini: {known}"
    problems = []
    for block in ALL_BLOCKS:
        unknown = [env for env in block.envs if env not in (*known, DEMO)]
        if not block.envs or unknown:
            problems.append(f"{block.where}: names {unknown or 'no env'}; tox.ini's envs are {known} (or {DEMO})")
        if block.envs == (DEMO,) and block.lang == "console":
            continue  # a transcript of commands and their output
        if block.lang not in SHELL_LANGS:
            problems.append(f"{block.where}: the marker must stand right before a ```bash block")
        if re.search(r"(^\s*|[;&|(]\s*|-m\s+)tox\b", block.text, re.MULTILINE):
            problems.append(f"{block.where}: runs tox; tox inside tox is not run here (test_demo.py runs the demo)")
    assert not problems, "\n".join(problems)


if DOCS_HERE:

    @pytest.mark.parametrize("doc", DOCS_HERE)
    def test_documented_commands_run(doc: str, tmp_path: Path, host_env: dict[str, str]) -> None:
        work = tmp_path / "work"
        copy_repository(work)
        env = {**host_env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        for block in (b for b in ALL_BLOCKS if b.doc == doc and CURRENT_ENV in b.envs):
            script = runnable(block)
            result = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-x", "-c", script],
                cwd=work,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=TIMEOUT_S,
            )
            assert result.returncode == 0, f"{block.where} failed (exit {result.returncode}):\n{result.stdout[-6000:]}"
