"""The single-stage commands (``fit``, ``validate``, ``test``, ``predict``): LightningCLI over every
module, datamodule and callback of the library, selectable by short class name in YAML or flags.

    lightning-cat fit --config configs/cat/both.tiny.yaml
    python -m lightning_cat test --config configs/eval/metrics.tiny.yaml

The experiment runner runs every stage through :func:`lightning_main` too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

# Lightning's own CLI calls jsonargparse APIs that warn about their deprecation on every run.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

__all__ = ["LightningCatCLI", "lightning_main", "register_classes"]

DESCRIPTION = (
    "lightning-cat: protect, defend, customize, sample and evaluate with Lightning. Subcommands fit, "
    "validate, test, predict run one stage from its config; `lightning-cat experiment --config <yaml>` "
    "runs (or resumes) a whole grid of stages and writes the results table and report."
)


def register_classes() -> None:
    """Import the library's modules, datamodules, callbacks and purifiers, so that jsonargparse
    resolves their short class names in configs."""
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


def lightning_main(args: Sequence[str] | None = None) -> LightningCatCLI:
    """Run one stage command (``fit --config x.yaml ...``; ``None``: from ``sys.argv``) in this process."""
    register_classes()
    return LightningCatCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        # A re-run in the same folder (e.g. evaluating again) replaces the saved config.yaml instead of aborting.
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": DESCRIPTION},
        args=None if args is None else list(args),
    )
