"""``python -m ganpo_plugins doctor``: the detected host versions and what was tested there."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ganpo_plugins")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("doctor", help="host versions installed here, supported ranges, tested versions")
    parser.parse_args(argv)
    from .tools.doctor import doctor_report

    print(doctor_report())


if __name__ == "__main__":
    main()
