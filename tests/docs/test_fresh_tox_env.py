"""The documented tox commands: `tox exec` only after the env was built, proven on a fresh env.

`tox exec` creates a missing env with its pinned packages but, by design, neither installs the
package under test nor runs `commands_pre`, so on an env never built a documented
`tox exec -e ENV -- python ...` fails with `ModuleNotFoundError: No module named 'ganpo_plugins'`.
The docs therefore build an env first: `tox run -e ENV --notest` (the package and the pinned
packages), or a full `tox run -e ENV` for an env with `commands_pre` (the OpenRLHF envs install
DeepSpeed and OpenRLHF there, and `--notest` skips them too).

- Every `tox exec -e ENV` in the docs comes after such a build line for ENV in the same document.
- In the env that has tox (``core``), the documented pair runs on a fresh env in a scratch copy of
  the repository: first `tox exec` alone (it must fail to import the package: the reason for the
  build line), then `tox run --notest` and `tox exec` (the package imports, from the copy). The
  env is the ``core`` env with every dependency left out: its own (``-x testenv:core.deps=``) and
  the package's (the copy's ``pyproject.toml`` declares none), so it builds in seconds with no
  torch instead of a multi-GB env; how tox installs the package and what `exec` skips do not
  depend on the dependencies.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

from test_documented_commands import REPO, copy_repository

DOCS = [
    REPO / "README.md",
    *sorted(REPO.glob("docs/*.md")),
    *sorted(REPO.glob("examples/*/README.md")),
    REPO / "benchmarks/README.md",
]
TOX = r"(?:\.venv/bin/tox|(?:python3?\s+-m\s+)?tox)"
EXEC = re.compile(rf"{TOX}\s+exec\s+-e\s+(?P<env>[\w.-]+)")


def envs_with_commands_pre() -> set[str]:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(REPO / "tox.ini")
    return {
        name.split(":", 1)[1]
        for name in tox.sections()
        if name.startswith("testenv:") and tox[name].get("commands_pre")
    }


def test_every_documented_tox_exec_follows_a_build_of_its_env() -> None:
    full_run = envs_with_commands_pre()
    problems = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in EXEC.finditer(text):
            env, before = match["env"], text[: match.start()]
            envs = rf"{TOX}\s+run\s+-e\s+(?:[\w.-]+,)*{re.escape(env)}(?:,[\w.-]+)*"  # -e a,b,c names it too
            notest = re.search(rf"{envs}\s+--notest", before)
            full = re.search(rf"{envs}(?![\w.,-])(?!\s+--notest)", before)
            if not (full if env in full_run else notest or full):
                line = text.count("\n", 0, match.start()) + 1
                build = f"tox run -e {env}" + ("" if env in full_run else " --notest")
                problems.append(f"{path.relative_to(REPO)}:{line}: `tox exec -e {env}` with no `{build}` before it")
    assert not problems, "\n".join(problems)


def test_notest_then_exec_finds_the_package_on_a_fresh_env(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    copy_repository(work)
    pyproject = work / "pyproject.toml"
    text, declared = re.subn(r"(?ms)^dependencies = \[.*?^\]", "dependencies = []", pyproject.read_text())
    assert declared == 1, "pyproject.toml's dependencies list moved: update this test"
    pyproject.write_text(text)
    env = dict(os.environ)
    for name in ("TOX_ENV_NAME", "TOX_WORK_DIR", "TOX_ENV_DIR", "TOX_PACKAGE", "VIRTUAL_ENV"):
        env.pop(name, None)  # this test runs inside a tox env: the scratch tox must not think so
    tox = [sys.executable, "-m", "tox", "--workdir", str(tmp_path / ".tox"), "-x", "testenv:core.deps="]
    # -I: not from the working directory (a documented `python examples/x/run.py` never has it on sys.path)
    probe = ["python", "-I", "-c", "import ganpo_plugins; print('PACKAGE', ganpo_plugins.__file__)"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*tox, *args], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
        )

    bare = run("exec", "-e", "core", "--", *probe)
    assert bare.returncode != 0 and "No module named 'ganpo_plugins'" in bare.stdout, bare.stdout[-3000:]
    built = run("run", "-e", "core", "--notest")
    assert built.returncode == 0, built.stdout[-3000:]
    found = run("exec", "-e", "core", "--", *probe)
    assert found.returncode == 0, found.stdout[-3000:]
    package = Path(re.search(r"^PACKAGE (.+)$", found.stdout, re.MULTILINE)[1])
    assert package.is_relative_to(work), package  # the scratch copy's package, installed editable


if importlib.util.find_spec("tox") is None:  # tox is in the core env only; elsewhere not collected (no skip)
    del test_notest_then_exec_finds_the_package_on_a_fresh_env
