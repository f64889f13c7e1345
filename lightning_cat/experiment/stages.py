"""Running one stage: a single-stage config file, a few overrides, the ``lightning-cat`` CLI.

The experiment never restates an option: it loads the stage's own YAML, overrides only what
ties stages together (input and output folders, the model, the seed, Trainer options shared by
the run), saves the resolved config beside the stage's outputs and runs it through
:func:`lightning_cat.cli.main`, in this process or, for multi-device Trainers whose launcher
re-executes the command, in a subprocess.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from lightning_cat.atomic import atomic_write_bytes

__all__ = ["StageCommand", "callback_args", "data_args", "load_stage_config", "model_args", "set_path"]


def load_stage_config(path: str | os.PathLike) -> dict[str, Any]:
    """A stage config file as a dict (a deep copy, safe to modify)."""
    config = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(config, dict):
        raise ValueError(f"stage config '{path}' must be a mapping")
    return copy.deepcopy(config)


def set_path(config: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``config["a"]["b"]...`` for ``dotted="a.b..."``, creating mappings on the way."""
    keys = dotted.split(".")
    node = config
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot set '{dotted}': '{key}' is not a mapping")
    node[keys[-1]] = value


def model_args(config: dict[str, Any]) -> dict[str, Any]:
    """The ``model.init_args`` mapping of a stage config (created if absent)."""
    model = config.setdefault("model", {})
    return model.setdefault("init_args", {}) if "class_path" in model else model


def data_args(config: dict[str, Any]) -> dict[str, Any]:
    """The ``data.init_args`` mapping of a stage config (created if absent)."""
    data = config.setdefault("data", {})
    return data.setdefault("init_args", {}) if "class_path" in data else data


def callback_args(config: dict[str, Any], class_name: str) -> dict[str, Any]:
    """``init_args`` of the Trainer callback whose class is ``class_name``.

    Raises:
        ValueError: if the config has no such callback.
    """
    for callback in (config.get("trainer") or {}).get("callbacks") or []:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).split(".")[-1] == class_name:
            return callback.setdefault("init_args", {})
    raise ValueError(f"the stage config has no {class_name} callback under trainer.callbacks")


class StageCommand:
    """A ``lightning-cat <subcommand>`` run of one resolved stage config.

    Args:
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        config: the resolved config (dict).
        folder: the stage's folder; the config is saved there as ``stage_config.yaml``.
        subprocess_mode: run in a child process (needed when the Trainer's launcher re-executes
            the command, e.g. ``strategy: ddp`` on several devices).
    """

    def __init__(
        self,
        subcommand: str,
        config: dict[str, Any],
        folder: Path,
        subprocess_mode: bool = False,
        log_file: Path | None = None,
    ):
        self.subcommand = subcommand
        self.config = config
        self.folder = Path(folder)
        self.subprocess_mode = subprocess_mode
        self.log_file = log_file

    @property
    def config_file(self) -> Path:
        return self.folder / "stage_config.yaml"

    def argv(self) -> list[str]:
        return [self.subcommand, "--config", str(self.config_file)]

    def run(self) -> None:
        """Save the resolved config and run the stage (logged values go to the config's logger).

        With ``log_file`` the stage's console output (progress bars, Lightning's messages,
        warnings) goes to that file; if the stage fails, its last lines are printed and the
        error is raised with the file's path.
        """
        atomic_write_bytes(self.config_file, yaml.safe_dump(self.config, sort_keys=False).encode())
        try:
            with _output_to(self.log_file) as stream:
                self._run(stream)
        except BaseException as error:
            if self.log_file is None or isinstance(error, KeyboardInterrupt):
                raise
            tail = "".join(self.log_file.read_text(errors="replace").splitlines(keepends=True)[-25:])
            print(f"\n--- last lines of {self.log_file} ---\n{tail}", file=sys.stderr)
            raise RuntimeError(
                f"stage '{self.subcommand} --config {self.config_file}' failed: {error!r}; full log: {self.log_file}"
            ) from error

    def _run(self, stream) -> None:
        if self.subprocess_mode:
            command = [sys.executable, "-m", "lightning_cat", *self.argv()]
            if stream is None:
                subprocess.run(command, check=True)
            else:
                subprocess.run(command, check=True, stdout=stream, stderr=subprocess.STDOUT)
            return
        from lightning_cat.cli import main

        with warnings.catch_warnings():
            # The stage's arguments are given explicitly; sys.argv holds the experiment's own.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            main(self.argv())


@contextlib.contextmanager
def _output_to(path: Path | None) -> Iterator[Any]:
    """Send this process's console output (print, tqdm, warnings, logging) to ``path``."""
    if path is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    with open(path, "a", buffering=1) as stream:
        handlers = [
            handler
            for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
            for handler in getattr(logger, "handlers", [])
            if isinstance(handler, logging.StreamHandler) and handler.stream in consoles
        ]
        originals = [handler.setStream(stream) for handler in handlers]
        try:
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield stream
        finally:
            for handler, original in zip(handlers, originals, strict=True):
                handler.setStream(original)
