"""Experiment configuration: the grid, the stage configs it reuses, and its validation.

An experiment file names the grid axes and, per stage, the config files the single-stage commands
take, so no option has a second copy (README's "Experiments" shows one; the entries are the typed
parameters of :func:`experiment_options`, parsed by jsonargparse like the stage commands).
``clean`` (or ``none``) as a protection trains on the clean images (a sweep does not apply to it).
A sweep multiplies the protection cells: ``advdm_plus`` becomes ``advdm_plus@eps_255=4`` and so
on. Defense grammar: ``none``, or components joined by ``+`` among ``cdl``, ``cat:<variant>`` and
``purify:<name>`` (at most one of each), e.g. ``cat:both+cdl``, ``purify:jpeg+cat:both`` (CAT is
then trained on the purified images). Types are checked by the parser; names, files and sweep
values by the functions here, all before any stage runs.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser, Namespace

__all__ = [
    "BASE_MODEL",
    "CLEAN_PROTECTIONS",
    "Defense",
    "ProtectionCell",
    "ExperimentConfig",
    "ExperimentConfigError",
    "StageFiles",
    "SubjectSets",
    "experiment_options",
    "experiment_parser",
    "load_experiment_config",
    "parse_defense",
    "parse_experiment_args",
    "resolve_experiment",
]

SKIMAGE_PREFIX = "skimage:"
#: Protection names that mean "no protection: train on the clean images".
CLEAN_PROTECTIONS = ("clean", "none")
#: The customization label of the base model's own samples (``base_model: true``): not customized.
BASE_MODEL = "base"
_GROUPS = ("protect", "cat", "purify", "customize")
_SINGLE = ("sample", "evaluate")


class ExperimentConfigError(ValueError):
    """An experiment config is invalid; the message names the entry and the allowed values."""


@dataclass(frozen=True)
class Defense:
    """One defense of the grid, parsed from its name."""

    name: str
    cat: str | None = None
    purify: str | None = None
    cdl: bool = False


def parse_defense(name: str, cat_variants: list[str], purifiers: list[str]) -> Defense:
    """Parse a defense name; CAT variants and purifiers must be among the allowed ones."""
    text = str(name).strip()
    if text == "none":
        return Defense(name=text)
    cat = purify = None
    cdl = False
    for part in text.split("+"):
        kind, _, value = part.partition(":")
        if part == "cdl" and not cdl:
            cdl = True
        elif kind == "cat" and value and cat is None:
            if value not in cat_variants:
                raise ExperimentConfigError(f"defense {text!r}: unknown CAT variant {value!r}; allowed: {cat_variants}")
            cat = value
        elif kind == "purify" and value and purify is None:
            if value not in purifiers:
                raise ExperimentConfigError(f"defense {text!r}: unknown purifier {value!r}; allowed: {purifiers}")
            purify = value
        else:
            raise ExperimentConfigError(
                f"defense {text!r}: cannot read {part!r}; use none, or cdl, cat:<variant>, purify:<name> "
                "joined by '+' (each at most once)"
            )
    return Defense(name=text, cat=cat, purify=purify, cdl=cdl)


@dataclass(frozen=True)
class ProtectionCell:
    """One protection of the grid: a method (or ``clean``) and the options a sweep sets for it."""

    method: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """``method``, or ``method@opt=value,...`` for a sweep point (the label in results and folders)."""
        if not self.options:
            return self.method
        return self.method + "@" + ",".join(f"{key}={value:g}" for key, value in self.options)

    @property
    def is_clean(self) -> bool:
        return self.method in CLEAN_PROTECTIONS


@dataclass
class ExperimentConfig:
    """A resolved, validated experiment: the entries of :func:`experiment_options` with names
    parsed and paths made absolute.

    Attributes:
        defenses: parsed defenses.
        stage_files: stage -> name -> config file (``sample``/``evaluate`` under the name ``""``).
        source: the experiment file.
        surrogate_sets: subject -> the separate clean set its surrogate protections fine-tune on.
    """

    run_dir: str
    subjects: dict[str, list[str]]
    protections: list[str]
    defenses: list[Defense]
    customizations: list[str]
    stage_files: dict[str, dict[str, str]]
    model: str = "tiny"
    trainer: dict[str, Any] = field(default_factory=dict)
    subject_size: int = 80
    seed: int = 0
    source: str | None = None
    sweep: dict[str, list[float]] = field(default_factory=dict)
    surrogate_sets: dict[str, list[str]] = field(default_factory=dict)
    skip: list[str] = field(default_factory=list)
    base_model: bool = False

    def skips(self, protection: ProtectionCell, defense: Defense) -> bool:
        """Whether the grid leaves the cell ``protection`` x ``defense`` out (the ``skip`` entry)."""
        return f"{protection.name}/{defense.name}" in self.skip or f"{protection.method}/{defense.name}" in self.skip

    @property
    def protection_cells(self) -> list[ProtectionCell]:
        """The protections of the grid, each method at every point of the sweep."""
        points = [()]
        for key, values in self.sweep.items():
            points = [point + ((key, value),) for point in points for value in values]
        return [
            ProtectionCell(name) if name in CLEAN_PROTECTIONS else ProtectionCell(name, point)
            for name in self.protections
            for point in (points if name not in CLEAN_PROTECTIONS else [()])
        ]

    def stage_file(self, stage: str, name: str = "") -> str:
        return self.stage_files[stage][name]


@dataclass
class SubjectSets:
    """A subject given as a mapping: the images protected and, optionally, a separate clean set.

    Args:
        images: the subject's images (a folder, ``skimage:<name>`` photographs, or a list of them).
        surrogate_clean: a separate clean set of the subject that FSMG/ASPL fine-tune their
            surrogate on (Anti-DreamBooth's set_A).
    """

    images: str | list[str]
    surrogate_clean: str | list[str] | None = None


@dataclass
class StageFiles:
    """The config file of each single-stage command, relative to the experiment file.

    Args:
        protect: a template with ``{name}`` or a mapping protection -> file.
        cat: a template with ``{name}`` or a mapping CAT variant -> file.
        purify: a template with ``{name}`` or a mapping purifier -> file.
        customize: a template with ``{name}`` or a mapping customization -> file.
        sample: the sampling config.
        evaluate: the evaluation config.
    """

    protect: str | dict[str, str] | None = None
    cat: str | dict[str, str] | None = None
    purify: str | dict[str, str] | None = None
    customize: str | dict[str, str] | None = None
    sample: str | None = None
    evaluate: str | None = None


def experiment_options(
    run_dir: str,
    subjects: dict[str, str | list[str] | SubjectSets],
    protections: list[str],
    defenses: list[str],
    customizations: list[str],
    stages: StageFiles,
    model: str = "tiny",
    trainer: dict[str, Any] | None = None,
    subject_size: int = 80,
    seed: int = 0,
    sweep: dict[str, list[int | float]] | None = None,
    skip: list[str] | None = None,
    base_model: bool = False,
) -> None:
    """The entries of an experiment file (the schema of ``lightning-cat experiment``).

    Args:
        run_dir: where every stage's outputs, the results and the report go.
        subjects: subject name -> a folder of images, ``skimage:<name>`` photographs, a list of them,
            or ``{images: ..., surrogate_clean: ...}``.
        protections: ``clean`` (or ``none``) and protection methods.
        defenses: ``none``, or ``cdl``, ``cat:<variant>``, ``purify:<name>`` joined by ``+``.
        customizations: customization names (each needs a ``stages.customize`` file).
        stages: the single-stage config file of each stage.
        model: ``pretrained_model_name_or_path`` of every stage.
        trainer: Trainer options applied to every stage (e.g. ``{accelerator: gpu, max_steps: 3}``).
        subject_size: shorter side, in pixels, of materialized ``skimage:`` subject images.
        seed: seed of every stage.
        sweep: protection option -> the values every protection is run at.
        skip: cells of the grid left out, each ``<protection>/<defense>`` (a protection by its method,
            which covers every sweep point, or by its cell name such as ``advdm_plus@eps_255=8``).
        base_model: also sample the model itself, not customized, with the sample stage's prompts and
            seeds, and evaluate it against each subject (rows with customization ``base``): the
            reference a customization has to beat on the subject metrics.
    """


def experiment_parser() -> ArgumentParser:
    """The parser of ``lightning-cat experiment``: ``--config``, the experiment's entries (typed, with
    dotted overrides such as ``--trainer.max_steps 3``, and ``--print_config``) and the run options."""
    parser = ArgumentParser(
        prog="lightning-cat experiment",
        description="Run the protocol protect -> defend -> customize -> sample -> evaluate over a grid. "
        "Re-running resumes: finished stages are skipped, a killed training stage continues from its last "
        "checkpoint, stages whose config changed are redone.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="experiment YAML (e.g. configs/experiment/demo.yaml)")
    parser.add_function_arguments(experiment_options, as_group=False)
    # How to run it (not part of the experiment's fingerprint):
    parser.add_argument("--overwrite", action="store_true", help="redo every stage")
    parser.add_argument(
        "--stage_process",
        type=Literal["auto", "inprocess", "subprocess"],
        default="auto",
        help="run stages in this process or in subprocesses (auto: subprocesses only when the Trainer "
        "options need a re-executing launcher, e.g. devices > 1 with strategy ddp)",
    )
    parser.add_argument("--verbose", action="store_true", help="show each stage's output (default: its stage.log)")
    parser.add_argument("--plan", action="store_true", help="list the stages and whether they are done, then exit")
    return parser


def parse_experiment_args(args: list[str]) -> Namespace:
    """Parse experiment arguments; a bad type or entry raises :class:`ExperimentConfigError`."""
    parser = experiment_parser()
    parser.exit_on_error = False
    try:
        return parser.parse_args(args)
    except ArgumentError as error:
        message = str(error)
        if "not accepted" in message or "does not accept" in message:
            message += f"; allowed: {list(inspect.signature(experiment_options).parameters)}"
        raise ExperimentConfigError(f"experiment {' '.join(args)}: {message}") from None


def _existing(path: str, base: Path, what: str) -> str:
    candidate = Path(path).expanduser()
    for option in (candidate, base / candidate) if not candidate.is_absolute() else (candidate,):
        if option.is_file() or option.is_dir():
            return str(option.resolve())
    raise ExperimentConfigError(f"{what}: '{path}' does not exist (relative paths are read from '{base}')")


def _sources(spec: str | list[str], base: Path, subject: str, required: bool) -> list[str]:
    items = [spec] if isinstance(spec, str) else spec
    if not items:
        raise ExperimentConfigError(f"subject {subject!r} lists no images")
    return [
        item if item.startswith(SKIMAGE_PREFIX) else _subject_source(item, base, subject, required) for item in items
    ]


def _subject_source(path: str, base: Path, subject: str, required: bool) -> str:
    if required:
        return _existing(path, base, f"subject {subject!r}")
    candidate = Path(path).expanduser()
    return str(candidate if candidate.is_absolute() else (base / candidate).resolve())


def _stage_file(spec: str | dict[str, str] | None, name: str, base: Path, stage: str) -> str:
    if isinstance(spec, dict):
        if name not in spec:
            raise ExperimentConfigError(f"stages.{stage} has no config for {name!r}; configured: {sorted(spec)}")
        return _existing(spec[name], base, f"stages.{stage}.{name}")
    if isinstance(spec, str) and "{name}" in spec:
        return _existing(spec.format(name=name), base, f"stages.{stage} for {name!r}")
    raise ExperimentConfigError(f"stages.{stage} must be a mapping name -> file or a path template with {{name}}")


def _names(raw: dict[str, Any], key: str) -> list[str]:
    names = raw[key]
    if not names:
        raise ExperimentConfigError(f"'{key}' must list at least one name")
    if len(set(names)) != len(names):
        raise ExperimentConfigError(f"'{key}' lists a name twice: {names}")
    return names


def load_experiment_config(
    path: str | os.PathLike, overrides: dict[str, Any] | None = None, *, require_subjects: bool = True
) -> ExperimentConfig:
    """Read, type-check, resolve and validate an experiment YAML file.

    Args:
        path: the experiment file.
        overrides: entries that replace the file's (``None`` values are ignored).
        require_subjects: subject folders must exist (planning alone does not need them).

    Raises:
        ExperimentConfigError: naming the entry at fault and the allowed values.
    """
    args = ["--config", str(path)]
    for key, value in (overrides or {}).items():
        if value is not None:  # a string as it is (JSON would quote it into the value), the rest as JSON
            text = str(value) if isinstance(value, str | os.PathLike) else json.dumps(value, default=str)
            args += [f"--{key}", text]
    return resolve_experiment(parse_experiment_args(args), require_subjects=require_subjects)


def resolve_experiment(options: Namespace, *, require_subjects: bool = True) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of parsed arguments: names checked against the registries, files
    found (relative to the last ``--config`` file's folder, else the working directory).

    Raises:
        ExperimentConfigError: naming the entry at fault and the allowed values.
    """
    from lightning_cat.cat import CAT_VARIANTS
    from lightning_cat.protections import PROTECTIONS
    from lightning_cat.purification import PURIFIERS

    raw = options.as_dict()
    configs = options.get("config") or []
    source = Path(configs[-1].absolute) if configs else None
    base = source.parent if source else Path.cwd()
    stages = {key: value for key, value in raw["stages"].items() if value is not None}

    subjects: dict[str, list[str]] = {}
    surrogate_sets: dict[str, list[str]] = {}
    for name, spec in raw["subjects"].items():
        if isinstance(spec, dict):
            if spec.get("surrogate_clean"):
                surrogate_sets[name] = _sources(
                    spec["surrogate_clean"], base, f"{name}.surrogate_clean", require_subjects
                )
            spec = spec["images"]
        subjects[name] = _sources(spec, base, name, require_subjects)
    if not subjects:
        raise ExperimentConfigError("'subjects' must name at least one subject")

    protections = _names(raw, "protections")
    allowed = list(CLEAN_PROTECTIONS) + sorted(PROTECTIONS)
    files: dict[str, dict[str, str]] = {group: {} for group in _GROUPS}
    for name in protections:
        if name not in allowed:
            raise ExperimentConfigError(f"unknown protection {name!r}; allowed: {allowed}")
        if name not in CLEAN_PROTECTIONS:
            files["protect"][name] = _stage_file(stages.get("protect"), name, base, "protect")
            method = (yaml.safe_load(Path(files["protect"][name]).read_text()) or {}).get("model") or {}
            method = (method.get("init_args") or {}).get("method")
            if method != name:
                raise ExperimentConfigError(
                    f"protection {name!r}: its config '{files['protect'][name]}' sets method {method!r}"
                )

    sweep = _sweep(raw.get("sweep"), [p for p in protections if p not in CLEAN_PROTECTIONS])
    defenses = [parse_defense(d, list(CAT_VARIANTS), sorted(PURIFIERS)) for d in _names(raw, "defenses")]
    for defense in defenses:
        if defense.cat and defense.cat not in files["cat"]:
            files["cat"][defense.cat] = _stage_file(stages.get("cat"), defense.cat, base, "cat")
        if defense.purify and defense.purify not in files["purify"]:
            files["purify"][defense.purify] = _stage_file(stages.get("purify"), defense.purify, base, "purify")

    customizations = _names(raw, "customizations")
    if BASE_MODEL in customizations:
        raise ExperimentConfigError(
            f"customizations: {BASE_MODEL!r} is the label of the base model's rows; set base_model: true instead"
        )
    for name in customizations:
        files["customize"][name] = _stage_file(stages.get("customize"), name, base, "customize")
    for stage in _SINGLE:
        if not stages.get(stage):
            raise ExperimentConfigError(f"stages.{stage} must name a config file")
        files[stage] = {"": _existing(str(stages[stage]), base, f"stages.{stage}")}

    config = ExperimentConfig(
        run_dir=raw["run_dir"],
        subjects=subjects,
        surrogate_sets=surrogate_sets,
        protections=protections,
        defenses=defenses,
        customizations=customizations,
        stage_files=files,
        model=raw["model"],
        trainer=dict(raw["trainer"] or {}),
        subject_size=raw["subject_size"],
        seed=raw["seed"],
        source=str(source) if source else None,
        sweep=sweep,
        skip=list(raw.get("skip") or []),
        base_model=bool(raw.get("base_model")),
    )
    _check_skip(config)
    return config


def _check_skip(config: ExperimentConfig) -> None:
    """Every ``skip`` entry names a cell of the grid, and the grid keeps at least one cell."""
    cells = [(p, d) for p in config.protection_cells for d in config.defenses]
    names = [f"{p.name}/{d.name}" for p, d in cells]
    for entry in config.skip:
        if not any(config.skips(p, d) for p, d in cells if entry in (f"{p.name}/{d.name}", f"{p.method}/{d.name}")):
            raise ExperimentConfigError(f"skip: {entry!r} is not a cell of the grid; cells: {names}")
    if all(config.skips(p, d) for p, d in cells):
        raise ExperimentConfigError(f"skip leaves no cell of the grid: {names}")


def _sweep(raw: dict[str, list[int | float]] | None, methods: list[str]) -> dict[str, list[int | float]]:
    """The sweep mapping, checked: protection options with non-empty lists of distinct numbers that
    every swept method takes and accepts (so a bad budget fails here, before any stage runs)."""
    from lightning_cat.protections import protection_option_names, resolve_protection_options

    if raw is None:
        return {}
    if not raw:
        raise ExperimentConfigError("sweep must map protection options to lists of values, e.g. {eps_255: [4, 8, 16]}")
    known = sorted(protection_option_names())
    # One number, one spelling: 8.0 is 8, so a budget given either way names the same stages.
    raw = {key: [int(v) if float(v).is_integer() else float(v) for v in values] for key, values in raw.items()}
    for key, values in raw.items():
        if key not in known:
            raise ExperimentConfigError(f"sweep: {key!r} is not a protection option; options: {known}")
        if not values or len(set(values)) != len(values):
            raise ExperimentConfigError(f"sweep.{key} must list distinct numbers, got {values!r}")
        for method in methods:
            for value in values:
                try:
                    resolve_protection_options(method, **{key: value})
                except ValueError as error:
                    raise ExperimentConfigError(f"sweep.{key}={value!r} for {method!r}: {error}") from None
    return raw
