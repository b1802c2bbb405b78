"""``python -m ganpo_plugins doctor``: the detected host versions and what was tested there."""

from __future__ import annotations

import platform

from ..adapter_kit.versions import HOSTS, installed_version, version_key

__all__ = ["doctor_report"]


def doctor_report() -> str:
    """A markdown table: every host, its installed version, whether it is supported and tested."""
    rows = [
        f"ganpo-plugins {installed_version('ganpo-plugins') or '(not installed)'}, Python {platform.python_version()}, "
        f"torch {installed_version('torch') or '(not installed)'}",
        "",
        "| host | installed | supported | tested (Python, last green) | status | features tested |",
        "|---|---|---|---|---|---|",
    ]
    for host in HOSTS.values():
        installed = installed_version(host.name)
        tested = "; ".join(f"{v} (py{py}, {day})" for v, py, day in host.tested)
        if installed is None:
            status = "not installed"
        elif not host.contains(installed):
            status = "UNSUPPORTED: the adapter refuses to attach"
        elif installed in {v for v, _, _ in host.tested}:
            status = "tested"
        elif version_key(installed) > version_key(host.newest_tested):
            status = "supported, newer than tested"
        else:
            status = "supported, between tested ends"
        rows.append(f"| {host.name} | {installed or '-'} | {host.range} | {tested} | {status} | {host.features} |")
    return "\n".join(rows)
