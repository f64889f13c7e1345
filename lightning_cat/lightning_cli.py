"""The single-stage commands (``fit``, ``validate``, ``test``, ``predict``): LightningCLI over every
module, datamodule and callback of the library, selectable by short class name in YAML or flags.

    lightning-cat fit --config configs/cat/both.tiny.yaml
    python -m lightning_cat test --config configs/eval/metrics.tiny.yaml

The experiment runner runs every stage through :func:`lightning_main` too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

# Lightning's own CLI calls jsonargparse APIs that warn about their deprecation on every run.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

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

    def before_instantiate_classes(self) -> None:
        # A logger's relative save_dir lies inside trainer.default_root_dir, as Lightning's default
        # logger does: configs write `save_dir: .` and their logs follow a changed default_root_dir.
        trainer = self.config[self.config.subcommand].trainer if self.config.get("subcommand") else self.config.trainer
        root = trainer.get("default_root_dir")
        loggers = trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            save_dir = logger.get("init_args.save_dir") if hasattr(logger, "get") else None
            if root and save_dir is not None and not Path(save_dir).expanduser().is_absolute():
                logger.init_args.save_dir = str(Path(root) / save_dir)

    def _parse_ckpt_path(self) -> None:
        """The parsed config wins over a ``ckpt_path``'s stored hyperparameters.

        Lightning 2.6 re-applies the checkpoint's ``hyper_parameters`` over the config and the
        command-line arguments, so a resumed run could not change any model option (a new
        ``output_dir`` was ignored). Here the checkpoint gives the trained state only; options that
        differ from the ones it was saved with are named in a warning.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        # mmap: only the hyperparameters are read here, not the weights.
        stored = torch.load(ckpt_path, weights_only=True, map_location="cpu", mmap=True).get("hyper_parameters") or {}
        init_args = self.config[subcommand].get("model.init_args")
        current = init_args.as_dict() if hasattr(init_args, "as_dict") else {}
        changed = sorted(k for k, v in current.items() if k in stored and stored[k] != v)
        if changed:
            rank_zero_warn(
                f"ckpt_path '{ckpt_path}': these model options differ from the checkpoint's and the new values "
                f"are used: {changed}"
            )

    def instantiate_classes(self) -> None:
        # jsonargparse wraps a constructor's exception in a generic "Does not validate against any
        # of the Union subtypes" ValueError; surface the constructor's own message instead.
        # Unwrap only jsonargparse's own wrappers: the library's error (e.g. an ImageInputError naming
        # a truncated file) is the message, not the PIL error it was raised from.
        try:
            super().instantiate_classes()
        except ValueError as error:
            cause = error
            while cause.__cause__ is not None and _raised_by_jsonargparse(cause):
                cause = cause.__cause__
            if cause is error:
                raise
            raise cause from None


def _raised_by_jsonargparse(error: BaseException) -> bool:
    """Whether ``error`` was raised inside jsonargparse (its innermost traceback frame is there)."""
    frame = error.__traceback__
    if frame is None:
        return True
    while frame.tb_next is not None:
        frame = frame.tb_next
    return "jsonargparse" in Path(frame.tb_frame.f_code.co_filename).parts


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
