"""Facts written in more than one place stay equal: CI's command is the README's, and the host
versions of tox.ini, `doctor` (ganpo_plugins.hosts) and the README's compatibility table agree."""

from __future__ import annotations

import configparser
import re

from test_documented_commands import REPO, split_comment

from ganpo_plugins.adapter_kit.versions import HOSTS

README = (REPO / "README.md").read_text(encoding="utf-8")
TABLE_NAMES = {
    "trl": "TRL",
    "axolotl": "Axolotl",
    "openrlhf": "OpenRLHF",
    "deepspeed": "DeepSpeed",
    "llamafactory": "LLaMA-Factory",
}
# The tox env that pins each host's oldest supported release.
OLDEST_ENV = {"deepspeed": "openrlhf-oldest", "llamafactory": "llamafactory"}


def commands(text: str) -> list[str]:
    """The non-empty command lines of a shell script or block, comments removed."""
    lines = (split_comment(line)[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#!")]


def test_ci_runs_the_readme_setup_and_test_commands_verbatim() -> None:
    section = README[README.index("## Two commands") :]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)[1]
    setup, *_, test = commands(block)
    ci = commands((REPO / ".ci/run").read_text(encoding="utf-8"))
    assert ci[-2:] == [setup, test], f".ci/run must end with the README's commands {[setup, test]}, not {ci[-2:]}"
    assert "tox" in test and "-e" not in test.split()  # every env, as CI runs it


def test_oldest_pins_doctor_and_the_compatibility_table_agree() -> None:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(REPO / "tox.ini")
    installs = {env: tox[f"testenv:{env}"].get("deps", "") + tox[f"testenv:{env}"].get("commands_pre", "") for env in
                ("trl-oldest", "axolotl-oldest", "openrlhf-oldest", "llamafactory")}  # fmt: skip
    rows = [line for line in README.splitlines() if line.startswith("| ")]
    for name, support in HOSTS.items():
        env = OLDEST_ENV.get(name, f"{name}-oldest")
        pinned = re.search(rf"\b{name}==(\S+)", installs[env])
        assert pinned is not None, f"tox.ini [{env}] pins no {name}"
        assert support.minimum == pinned[1] == support.tested[0][0], (name, support.minimum, pinned[1])
        label = TABLE_NAMES[name]
        for version, python, _ in support.tested:
            exact = re.compile(rf"(?<![\d.]){re.escape(version)}(?![\d.])")
            seen = [row for row in rows if label in row and exact.search(row) and f"| {python} |" in row]
            assert seen, f"the README's compatibility table has no row for {label} {version} on Python {python}"
