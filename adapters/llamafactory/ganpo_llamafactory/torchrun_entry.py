"""The script ``torchrun`` runs in each process when ``ganpo-llamafactory-cli train`` launches a
distributed run: LLaMA-Factory's launcher runs its own file the same way (``llamafactory/launcher.py``
as ``__main__``), and the CLI hands it this one instead, so each process serves the ``ganpo:`` block."""

import sys

if __name__ == "__main__":
    sys.path.pop(0)  # this file's folder: its modules are importable only as ganpo_llamafactory.*
    from ganpo_llamafactory.cli import cli_run_exp

    cli_run_exp()
