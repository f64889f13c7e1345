"""Running one stage: a single-stage config file, a few overrides, the ``lightning-cat`` CLI.

The experiment never restates an option: it loads the stage's own YAML, overrides only what
ties stages together (input and output folders, the model, the seed, Trainer options shared by
the run), saves the resolved config beside the stage's outputs and runs it through
:func:`lightning_cat.lightning_cli.lightning_main`, in this process or, for multi-device Trainers whose launcher
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

__all__ = [
    "StageCommand",
    "add_callback",
    "callback_args",
    "data_args",
    "drop_callback",
    "load_stage_config",
    "model_args",
    "resolve_class",
]


def load_stage_config(path: str | os.PathLike) -> dict[str, Any]:
    """A stage config file as a dict (a deep copy, safe to modify)."""
    config = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(config, dict):
        raise ValueError(f"stage config '{path}' must be a mapping")
    return copy.deepcopy(config)


def model_args(config: dict[str, Any]) -> dict[str, Any]:
    """The ``model.init_args`` mapping of a stage config (created if absent)."""
    model = config.setdefault("model", {})
    return model.setdefault("init_args", {}) if "class_path" in model else model


def data_args(config: dict[str, Any]) -> dict[str, Any]:
    """The ``data.init_args`` mapping of a stage config (created if absent)."""
    data = config.setdefault("data", {})
    return data.setdefault("init_args", {}) if "class_path" in data else data


def resolve_class(class_path: str) -> type:
    """The class a config's ``class_path`` names: a dotted import path, or a short name that the CLI
    resolves among the library's callbacks, modules, datamodules and purifiers.

    Raises:
        ValueError: for a name that resolves to no class.
    """
    import importlib

    module_name, _, name = str(class_path).rpartition(".")
    modules = [module_name] if module_name else _SHORT_NAME_MODULES
    for candidate in modules:
        found = getattr(importlib.import_module(candidate), name, None)
        if isinstance(found, type):
            return found
    raise ValueError(f"class_path {class_path!r} names no class (short names resolve in {_SHORT_NAME_MODULES})")


_SHORT_NAME_MODULES = [
    "lightning_cat.callbacks",
    "lightning_cat.modules",
    "lightning_cat.datamodules",
    "lightning_cat.purification",
    "lightning.pytorch.callbacks",
]


def _callbacks(config: dict[str, Any]) -> list[Any]:
    return (config.get("trainer") or {}).get("callbacks") or []


def _is_a(spec: Any, cls: type) -> bool:
    return isinstance(spec, dict) and "class_path" in spec and issubclass(resolve_class(spec["class_path"]), cls)


def callback_args(config: dict[str, Any], cls: type) -> dict[str, Any]:
    """``init_args`` of the Trainer callback that is a ``cls`` (or a subclass).

    Raises:
        ValueError: if the config has no such callback.
    """
    for callback in _callbacks(config):
        if _is_a(callback, cls):
            return callback.setdefault("init_args", {})
    raise ValueError(f"the stage config has no {cls.__name__} callback under trainer.callbacks")


def add_callback(config: dict[str, Any], cls: type, **init_args: Any) -> None:
    """Append a ``cls`` callback with ``init_args`` to the config's Trainer callbacks."""
    trainer = config.setdefault("trainer", {})
    trainer["callbacks"] = [
        *_callbacks(config),
        {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": init_args},
    ]


def drop_callback(config: dict[str, Any], cls: type) -> None:
    """Remove every ``cls`` callback from the config's Trainer callbacks."""
    trainer = config.setdefault("trainer", {})
    trainer["callbacks"] = [c for c in _callbacks(config) if not _is_a(c, cls)]


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
        from lightning_cat.lightning_cli import lightning_main

        with warnings.catch_warnings():
            # The stage's arguments are given explicitly; sys.argv holds the experiment's own.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            lightning_main(self.argv())


def _redirectable(handler: logging.Handler) -> bool:
    """A console handler with a settable stream (``logging.lastResort`` reads ``sys.stderr`` live)."""
    return isinstance(handler, logging.StreamHandler) and not isinstance(
        getattr(type(handler), "stream", None), property
    )


@contextlib.contextmanager
def _output_to(path: Path | None) -> Iterator[Any]:
    """Send this process's console output (print, tqdm, warnings, logging) to ``path``."""
    if path is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    with open(path, "a", buffering=1) as stream:
        handlers = list(
            {
                id(handler): handler
                for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
                for handler in getattr(logger, "handlers", [])
                if _redirectable(handler) and handler.stream in consoles
            }.values()
        )
        originals = [handler.setStream(stream) for handler in handlers]
        try:
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield stream
        finally:
            for handler, original in zip(handlers, originals, strict=True):
                handler.setStream(original)
