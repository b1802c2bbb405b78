"""The host version table, the gate and ``python -m ganpo_plugins doctor``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ganpo_plugins.adapter_kit import versions as hosts


@pytest.mark.parametrize(
    ("installed", "inside"),
    [("1.9.0", True), ("1.16.0", True), ("1.17.0.dev0", True), ("1.8.2", False), ("2.0.0", False)],
)
def test_trl_range(installed: str, inside: bool) -> None:
    assert hosts.HOSTS["trl"].contains(installed) is inside


def test_gate_names_version_and_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hosts, "installed_version", lambda name: "0.18.0")
    with pytest.raises(hosts.HostVersionError, match=r"axolotl 0\.18\.0 is installed.*axolotl>=0\.19\.0"):
        hosts.require_host("axolotl")
    monkeypatch.setattr(hosts, "installed_version", lambda name: None)
    with pytest.raises(hosts.HostVersionError, match="openrlhf is not installed"):
        hosts.require_host("openrlhf")


def test_newer_than_tested_warns_once_per_call(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(hosts, "installed_version", lambda name: "1.99.0")
    assert hosts.require_host("trl") == "1.99.0"
    assert "newer than the newest version tested (1.16.0)" in caplog.text


def test_tested_ends_lie_inside_the_declared_range() -> None:
    for host in hosts.HOSTS.values():
        for tested, _, _ in host.tested:
            assert host.contains(tested), (host.name, tested)
        assert host.tested[0][0] == host.minimum  # the oldest supported version is tested


def test_doctor_prints_every_host() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ganpo_plugins", "doctor"], capture_output=True, text=True, check=True
    ).stdout
    for name in hosts.HOSTS:
        assert f"| {name} |" in out
    assert "torch" in out.splitlines()[0]


def test_host_class_claims_host_classes_and_their_subclasses_by_name() -> None:
    host_dpo = type("DPOTrainer", (), {"__module__": "host.trainer.dpo"})
    user_dpo = type("MyDPOTrainer", (host_dpo,), {"__module__": "my_project"})
    same_name_elsewhere = type("DPOTrainer", (), {"__module__": "other.dpo"})
    assert hosts.host_class(user_dpo(), "host.", ("DPOTrainer", "CPOTrainer")) == "DPOTrainer"
    assert hosts.host_class(same_name_elsewhere(), "host.", ("DPOTrainer",)) is None
    assert hosts.host_class(object(), "host.", ("DPOTrainer",)) is None
