"""The ``lightning-cat`` command: LightningCLI over every module and datamodule of the library.

    lightning-cat fit --config configs/cat/both.tiny.yaml
    python -m lightning_cat test --config configs/eval/metrics.tiny.yaml

Modules, datamodules and callbacks are selectable by short class name in YAML or flags.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

# Lightning's own CLI calls jsonargparse APIs that warn about their deprecation on every run.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

__all__ = ["LightningCatCLI", "main"]


def _register_classes() -> None:
    # Importing registers the subclasses, so jsonargparse resolves short class names.
    import lightning_cat.callbacks  # noqa: F401
    import lightning_cat.datamodules  # noqa: F401
    import lightning_cat.modules  # noqa: F401
    import lightning_cat.purification  # noqa: F401


class LightningCatCLI(LightningCLI):
    """LightningCLI that builds the datamodule before the model.

    Datamodules validate their folders and images when constructed, so bad input fails with a
    clear message before any (possibly multi-GB) weights are loaded.
    """

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        trainer_defaults = {"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"}
        parser.set_defaults(trainer_defaults)
        # jsonargparse instantiates components in the order they were added: data first.
        parser.add_lightning_class_args(self._datamodule_class, "data", subclass_mode=self.subclass_mode_data)
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)

    def instantiate_classes(self) -> None:
        # jsonargparse wraps a constructor's exception in a generic "Does not validate against any
        # of the Union subtypes" ValueError; surface the constructor's own message instead.
        try:
            super().instantiate_classes()
        except ValueError as error:
            cause = error
            while cause.__cause__ is not None:
                cause = cause.__cause__
            if cause is error:
                raise
            raise cause from None


def main(args: Sequence[str] | None = None) -> LightningCatCLI | None:
    """Entry point of ``lightning-cat`` and ``python -m lightning_cat``.

    Returns the CLI (trainer, model, datamodule) when called with ``args``; from the command line
    (``args=None``) it returns None, since the console script passes the result to ``sys.exit``.
    """
    _register_classes()
    cli = LightningCatCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        args=None if args is None else list(args),
    )
    return cli if args is not None else None
