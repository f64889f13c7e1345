"""The ``lightning-cat`` command: the single-stage subcommands of LightningCLI and ``experiment``.

lightning-cat fit --config configs/cat/both.tiny.yaml          # one stage (lightning_cat.lightning_cli)
lightning-cat experiment --config configs/experiment/demo.yaml  # a whole grid (lightning_cat.experiment)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def main(args: Sequence[str] | None = None) -> Any:
    """Entry point of ``lightning-cat`` and ``python -m lightning_cat``.

    With explicit ``args`` (in-process use, tests) it returns the LightningCLI object of a stage
    command. From the command line (``args=None``, read from ``sys.argv``) it returns ``None``:
    the console script passes the return value to ``sys.exit``, which would turn an object into
    exit status 1.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["experiment"]:
        from lightning_cat.experiment.cli import experiment_main

        experiment_main(argv[1:])
        return None
    from lightning_cat.lightning_cli import lightning_main

    cli = lightning_main(None if args is None else argv)
    return None if args is None else cli
