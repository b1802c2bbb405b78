"""Fixtures shared by every test folder; host-agnostic (no host package imported here)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments) as a dict."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


# Host runs are offline and quiet (offline.env), with one math thread: on a small shared CPU,
# torch's thread pool mostly spins (3x slower here).
HOST_ENV = {**read_env_file(REPO / "offline.env"), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``examples/tiny/make_tiny_assets.py`` output (random hidden-64 Llama + 64 preference
    pairs), built once per session: ``<dir>/model`` and ``<dir>/prefs.jsonl``."""
    spec = importlib.util.spec_from_file_location("make_tiny_assets", REPO / "examples/tiny/make_tiny_assets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_assets(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def host_env() -> dict[str, str]:
    """The environment for a host CLI subprocess: this one plus the offline settings."""
    return {**os.environ, **HOST_ENV}


@pytest.fixture(scope="session")
def run_cli(host_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli([args...], log=path, timeout=s, python=True)``: run a command (``python -m``-style
    args are prefixed with this interpreter when ``python``), stdout+stderr to ``log`` and
    returned; never raises on a non-zero exit."""

    def run(
        args: list[str], log: Path, timeout: float = 600, python: bool = True, **popen: object
    ) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, *args] if python else args
        result = subprocess.run(
            cmd, env=host_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, **popen
        )
        log.write_text(result.stdout)
        return result

    return run


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in depth (a ``None`` override removes the key)."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="session")
def example_config() -> Callable[..., dict[str, Any]]:
    """``example_config("examples/x.yml", *overrides)``: an example YAML config as a dict, each
    mapping of overrides merged in depth in turn (``None`` removes a key)."""
    import yaml

    def load(relpath: str, *overrides: Mapping[str, Any]) -> dict[str, Any]:
        cfg = yaml.safe_load((REPO / relpath).read_text())
        for layer in overrides:
            cfg = merged(cfg, layer)
        return cfg

    return load


# The skip rule. Under tox (GANPO_TOX_ENV or GANPO_FORBID_SKIPS=1 set, as tox.ini does) each env runs
# only the tests meant for it, so a test that did not run there means a host or dependency went
# missing: the run fails on any skip (at collection too: a module's importorskip), any xfail or
# xpass, and any test path named on the command line of which no test passed (a folder that
# collected nothing, a file a ``-m`` selection emptied). Outcomes are counted here from pytest's own
# reports, not from the terminal reporter, so no plugin flag (``-p no:terminal``) turns it off.
# Only a ``-k`` narrowing, which a person types, waives the empty-path check.


def _skip_rule_on() -> bool:
    return os.environ.get("GANPO_FORBID_SKIPS") == "1" or bool(os.environ.get("GANPO_TOX_ENV"))


_FORBIDDEN: list[str] = []  # "<outcome> <nodeid>: <why>"
_PASSED: list[str] = []  # node ids of the tests that passed


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        _FORBIDDEN.append(f"skipped (at collection) {report.nodeid}: {report.longrepr}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    xfail = getattr(report, "wasxfail", None)
    if report.skipped and xfail is not None:
        _FORBIDDEN.append(f"xfailed {report.nodeid}: {xfail}")
    elif report.skipped:
        _FORBIDDEN.append(f"skipped {report.nodeid}: {report.longrepr}")
    elif report.passed and xfail is not None and report.when == "call":
        _FORBIDDEN.append(f"xpassed {report.nodeid}: {xfail}")
    elif report.passed and report.when == "call":
        _PASSED.append(report.nodeid)


def empty_test_paths(config: pytest.Config, passed: list[str]) -> list[str]:
    """The test paths named on the command line (files or folders, as in node ids: relative to the
    rootdir) of which no test passed."""
    named = []
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        if path.exists():
            inside = path.is_relative_to(config.rootpath)
            named.append(path.relative_to(config.rootpath).as_posix() if inside else str(path))
    ran = [nodeid.split("::")[0] for nodeid in passed]
    return [p for p in named if not any(r == p or r.startswith(p.rstrip("/") + "/") for r in ran)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _skip_rule_on():
        return
    broken = [f"FORBIDDEN {entry}" for entry in _FORBIDDEN]
    if not session.config.getoption("keyword"):
        broken += [f"EMPTY TEST SET {path}: no test of it passed" for path in empty_test_paths(session.config, _PASSED)]
    if broken:
        print("\n" + "\n".join(broken))
        if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
