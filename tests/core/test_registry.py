"""The plugin registry: pluggy hooks, entry points of fake installed distributions, errors that
name the plugin, and host adapters. The refusals are the "Plugins" table of docs/bad-input.md."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bad_input_table import table

from ganpo_plugins import MMDRegularizer, hookimpl, parse_config
from ganpo_plugins.config import GANPOConfigError
from ganpo_plugins.plugins.registry import (
    HOSTS_GROUP,
    PluginError,
    fresh_plugin_manager,
    host_adapter_failures,
    known_names,
    load_host_adapters,
    load_observers,
    not_loaded_plugins,
    notify_step_metrics,
    plugin_manager,
    register_plugin,
    resolve,
)

REGULARIZER = """
from ganpo_plugins import hookimpl

class Factory:
    pass

@hookimpl
def ganpo_regularizers():
    return {NAMES}
"""


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    fresh_plugin_manager()
    yield
    fresh_plugin_manager()


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """``install(dist, {entry point: module source}, group=...)``: a distribution on sys.path
    whose entry point ``name`` is the module ``<name>_plugin_mod``, as pip would leave it."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules: list[str] = []

    def add(dist: str, plugins: dict[str, str], group: str = "ganpo_plugins") -> None:
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = [f"[{group}]"]
        for name, source in plugins.items():
            module = f"{name}_plugin_mod"
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            lines.append(f"{name} = {module}")
            modules.append(module)
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        importlib.invalidate_caches()

    yield add
    for module in modules:
        sys.modules.pop(module, None)


def _regularizers(*names: str) -> str:
    return REGULARIZER.replace("{NAMES}", "{" + ", ".join(f"{n!r}: Factory" for n in names) + "}")


# -- the refusals of docs/bad-input.md --------------------------------------------------------------

CASES: dict[str, tuple[dict, Callable[[Callable[..., None]], None]]] = {
    "regularizer: broken (its module imports a missing package)": (
        {"regularizer": "broken"},
        lambda install: install("broken-dist", {"broken": "import a_package_that_is_not_installed\n"}),
    ),
    "regularizer: empty (its module has no hookimpl functions)": (
        {"regularizer": "empty"},
        lambda install: install("empty-dist", {"empty": "def ganpo_regularizers():\n    return {}\n"}),
    ),
    "regularizer: typo (it implements ganpo_regularizer, singular)": (
        {"regularizer": "typo"},
        lambda install: install(
            "typo-dist", {"typo": _regularizers("typo").replace("def ganpo_regularizers", "def ganpo_regularizer")}
        ),
    ),
    "regularizer: evil (it also contributes the built-in name mmd)": (
        {"regularizer": "evil"},
        lambda install: install("evil-dist", {"evil": _regularizers("evil", "mmd")}),
    ),
    "discriminator.kind: evil_regularizer (a plugin that contributes only a regularizer)": (
        {"discriminator": {"kind": "evil_regularizer"}},
        lambda install: install("x-dist", {"evil_regularizer": _regularizers("evil_regularizer")}),
    ),
    "discriminator.kind: cnn (a regularizer plugin is installed, not loaded)": (
        {"discriminator": {"kind": "cnn"}},
        lambda install: install("my-dist", {"my_regularizer": _regularizers("my_regularizer")}),
    ),
}

ROWS = table("Plugins")


def test_every_case_has_a_row_and_every_row_a_case() -> None:
    assert sorted(case for case, _ in ROWS) == sorted(CASES)


@pytest.mark.parametrize("case,fragments", ROWS, ids=[case for case, _ in ROWS])
def test_each_row_fails_with_its_message(case: str, fragments: list[str], install) -> None:
    config, setup = CASES[case]
    setup(install)
    with pytest.raises(GANPOConfigError) as info:
        parse_config(config)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from:\n{message}"
    assert message.count("\n  ") == 1, f"expected exactly one problem:\n{message}"
    assert "Did you mean" not in message
    # the rest of the registry keeps working
    assert resolve("regularizer", "mmd") is MMDRegularizer
    assert parse_config({"regularizer": "mmd"}).regularizer == "mmd"


# -- pluggy used as pluggy -----------------------------------------------------------------------------


class ToyPlugin:
    @hookimpl
    def ganpo_regularizers(self):
        return {"toy": MMDRegularizer}


def test_names_come_through_the_hook_caller() -> None:
    pm = plugin_manager()
    called: list[str] = []
    undo = pm.add_hookcall_monitoring(lambda name, impls, kwargs: called.append(name), lambda *a: None)
    register_plugin(ToyPlugin(), "toy_plugin")
    assert resolve("regularizer", "toy") is MMDRegularizer
    undo()
    assert "ganpo_regularizers" in called
    assert "toy" in known_names("regularizer") and "toy" not in known_names("discriminator")


def test_a_fresh_manager_forgets_registered_plugins() -> None:
    register_plugin(ToyPlugin(), "toy_plugin")
    old = plugin_manager()
    assert fresh_plugin_manager() is not old and plugin_manager() is not old
    assert "toy" not in known_names("regularizer")
    register_plugin(ToyPlugin(), "toy_plugin")  # the name is free again


def test_a_duplicate_is_blamed_on_the_newcomer_and_the_registry_survives() -> None:
    register_plugin(ToyPlugin(), "first")
    with pytest.raises(PluginError, match=r"plugin 'second' .* contributes regularizer 'toy', which plugin 'first'"):
        register_plugin(ToyPlugin(), "second")
    assert not plugin_manager().has_plugin("second")
    assert resolve("regularizer", "toy") is MMDRegularizer
    with pytest.raises(PluginError, match=r"contributes regularizer 'mmd', which plugin 'ganpo_plugins\.builtin'"):

        class Shadow:
            @hookimpl
            def ganpo_regularizers(self):
                return {"mmd": object}

        register_plugin(Shadow(), "shadow")
    assert resolve("regularizer", "mmd") is MMDRegularizer


def test_a_refused_plugin_is_refused_again_without_a_second_import(install, tmp_path) -> None:
    attempts = tmp_path / "attempts"
    install("broken-dist", {"broken": f"open({str(attempts)!r}, 'a').write('x')\nraise RuntimeError('boom')\n"})
    for _ in range(2):
        with pytest.raises(PluginError, match=r"plugin 'broken' .* failed to import: RuntimeError: boom"):
            resolve("regularizer", "broken")
    assert attempts.read_text() == "x"
    assert "broken" not in not_loaded_plugins()


def test_installed_plugins_are_imported_only_when_named(install) -> None:
    install("my-dist", {"my_regularizer": _regularizers("my_regularizer")})
    assert "my_regularizer" in not_loaded_plugins() and "my_regularizer" not in known_names("regularizer")
    parse_config({"regularizer": "mmd", "discriminator": {}})
    with pytest.raises(PluginError):
        resolve("discriminator", "mpl")
    assert "my_regularizer_plugin_mod" not in sys.modules
    assert resolve("regularizer", "my_regularizer").__name__ == "Factory"
    assert "my_regularizer" not in not_loaded_plugins() and "my_regularizer" in known_names("regularizer")
    with pytest.raises(PluginError) as info:
        resolve("discriminator", "cnn")
    assert "my_regularizer" not in str(info.value)


def test_two_distributions_with_one_entry_point_name_are_refused(install) -> None:
    install("one-dist", {"twin": _regularizers("twin")})
    install("two-dist", {"twin": _regularizers("twin")})
    with pytest.raises(PluginError, match=r"2 installed entry points are named 'twin'.*one-dist 1\.0.*two-dist 1\.0"):
        resolve("regularizer", "twin")


# -- observers ------------------------------------------------------------------------------------------

OBSERVER = """
from ganpo_plugins import hookimpl

SEEN = []

@hookimpl
def ganpo_step_metrics(step, metrics):
    SEEN.append((step, dict(metrics)))
"""


def test_observers_load_by_name_and_see_every_step(install) -> None:
    install("watch-dist", {"watcher": OBSERVER})
    notify_step_metrics(1, {"ganpo/adv_loss": 0.5})  # not loaded: nobody observes
    load_observers(["watcher"])
    load_observers(["watcher"])  # idempotent
    notify_step_metrics(2, {"ganpo/adv_loss": 0.25})
    assert sys.modules["watcher_plugin_mod"].SEEN == [(2, {"ganpo/adv_loss": 0.25})]


def test_observer_errors_name_the_observer(install) -> None:
    install("my-dist", {"my_regularizer": _regularizers("my_regularizer")})
    with pytest.raises(PluginError, match=r"observer 'nope': no plugin of that name .*not loaded: .*my_regularizer"):
        load_observers(["nope"])
    with pytest.raises(PluginError, match="observer 'my_regularizer' implements no ganpo_step_metrics hook"):
        load_observers(["my_regularizer"])


# -- host adapters ---------------------------------------------------------------------------------------

HOST = """
from ganpo_plugins import hookimpl

class Handle:
    def __init__(self, trainer, config, options):
        self.trainer, self.config, self.options = trainer, config, options

    def detach(self):
        pass

@hookimpl
def ganpo_attach(trainer, config, options):
    return Handle(trainer, config, options) if trainer == "{TRAINER}" else None
"""


def test_ganpo_attach_is_a_first_result_hook() -> None:
    spec = plugin_manager().hook.ganpo_attach.spec
    assert spec.opts["firstresult"] and spec.argnames == ("trainer", "config", "options")


def test_host_adapters_load_by_entry_point_and_failures_are_kept_per_adapter(install) -> None:
    install(
        "hosts-dist",
        {
            "alpha": HOST.replace("{TRAINER}", "alpha trainer"),
            "beta": HOST.replace("{TRAINER}", "beta trainer"),
            "broken_host": "raise RuntimeError('boom')\n",
            "silent_host": "X = 1\n",
        },
        group=HOSTS_GROUP,
    )
    pm = load_host_adapters()
    assert load_host_adapters() is pm  # loaded once
    handle = pm.hook.ganpo_attach(trainer="beta trainer", config={"weight": 1.0}, options={"ref_model": None})
    assert type(handle).__module__ == "beta_plugin_mod" and handle.options == {"ref_model": None}
    assert pm.hook.ganpo_attach(trainer="unknown trainer", config=None, options={}) is None
    failures = host_adapter_failures()
    assert {"broken_host", "silent_host"} <= set(failures) and not {"alpha", "beta"} & set(failures)
    assert failures["broken_host"] == (
        "host adapter 'broken_host' (entry point 'broken_host = broken_host_plugin_mod' of distribution "
        "hosts-dist 1.0) failed to import: RuntimeError: boom"
    )
    assert "implements no ganpo_attach hook" in failures["silent_host"]
    assert not plugin_manager().has_plugin("alpha")  # hosts never join the plugin registry
