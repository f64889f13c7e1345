"""The plan of an experiment: every stage of its grid, each once, in an order that respects their inputs.

Each cell of ``subjects x protections x defenses x customizations`` (less the ``skip`` entries) is a chain
subject -> protect -> (purify) -> (CAT) -> customize -> sample -> evaluate; with ``base_model`` each
subject also gets the base model's cell, subject -> sample (the model itself) -> evaluate. Stages shared between
cells appear once: one protected set per subject and method, one purified set and one CAT
adapter per input set, one class-image set per customization config. A stage is its key (its
folder in the run directory), a fingerprint of everything that determines its outputs (the
library version, its config file's bytes, the run-wide options, the fingerprints of its inputs)
and the work that writes them. Planning reads config files only: no model is touched.

Run directory::

    subjects/<subject>/images/                        clean images
    protect/<subject>/<protection>/images/            protected set + manifest.json
    purify/<subject>/<protection>/<purifier>/images/
    cat/<subject>/<input>/<variant>/adapter/
    class_images/<customization>/images/
    customize/<subject>/<protection>/<defense>/<customization>/model/
    sample/<subject>/<protection>/<defense>/<customization>/samples/
    evaluate/<subject>/<protection>/<defense>/<customization>/metrics.json
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_cat import __version__
from lightning_cat.atomic import atomic_write_json
from lightning_cat.callbacks import (
    LatentDistortionCallback,
    MetricsWriter,
    ProtectedImageEvaluator,
    PurifiedSetWriter,
    SampleWriter,
    TrainingCheckpoint,
)
from lightning_cat.callbacks.training_checkpoint import LAST_CHECKPOINT
from lightning_cat.experiment.config import BASE_MODEL, CLEAN_PROTECTIONS, Defense, ExperimentConfig, ProtectionCell
from lightning_cat.experiment.stages import (
    add_callback,
    callback_args,
    data_args,
    drop_callback,
    load_stage_config,
    model_args,
    resolve_class,
)
from lightning_cat.experiment.store import CHECKPOINTS, StageResult, StageStore, file_fingerprint, fingerprint
from lightning_cat.experiment.subjects import materialize_subject, subject_fingerprint
from lightning_cat.protections import protection_class

__all__ = ["LATENT_DISTORTION_KEYS", "Cell", "ExperimentPlan", "Stage", "StageRunner"]

#: ``run(subcommand, resolved_config, folder)``: runs one stage's ``lightning-cat`` command.
StageRunner = Callable[[str, dict[str, Any], Path], None]

#: What the evaluate stage logs of :class:`~lightning_cat.metrics.LatentDistortion` for the images a
#: customization trained on (protected, purified): ``base/*`` under the model's VAE and, for a CAT
#: defense, ``cat/*`` under the CAT-adapted VAE.
LATENT_DISTORTION_KEYS = ["latent_mse_relative", "recon_psnr"]


@dataclass
class Stage:
    """A planned stage: where it goes, what determines it, what it does, what it writes."""

    key: tuple[str, ...]
    fingerprint: str
    work: Callable[[Path], dict[str, Any] | None]
    label: str
    outputs: dict[str, Path] = field(default_factory=dict)
    result: StageResult | None = None


@dataclass
class Cell:
    """One cell of the grid and the stages whose outputs its results and images come from."""

    subject: str
    protection: str
    method: str
    defense: str
    customization: str
    clean: Stage
    protected: Stage
    images: Stage
    samples: Stage
    evaluate: Stage


def _column(metric: str) -> str:
    """A logged metric name as a results column: without the loop's prefix (``test/base/x`` -> ``base/x``)."""
    return metric.split("/", 1)[-1]


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.+" else "-" for ch in text)


class ExperimentPlan:
    """Every stage and cell of ``config``'s grid.

    Args:
        config: a loaded :class:`~lightning_cat.experiment.config.ExperimentConfig`.
        store: where stages write (their folders are ``store.path(*key)``).
        run_stage: runs one stage command (the runner's; planning never calls it).
    """

    def __init__(self, config: ExperimentConfig, store: StageStore, run_stage: StageRunner) -> None:
        self.config = config
        self.store = store
        self.run_stage = run_stage
        self.stages: dict[tuple[str, ...], Stage] = {}
        self.cells: list[Cell] = []
        for subject in config.subjects:
            for protection in config.protection_cells:
                for defense in config.defenses:
                    if config.skips(protection, defense):
                        continue
                    for customization in config.customizations:
                        self._evaluate(subject, protection, defense, customization)
            if config.base_model:
                self._evaluate(subject, ProtectionCell(CLEAN_PROTECTIONS[0]), Defense("none"), BASE_MODEL)

    # ------------------------------------------------------------------ stage configs

    def _stage_config(self, stage: str, name: str, folder: Path, *, with_model: bool = True) -> dict[str, Any]:
        """The stage's own config with the run-wide overrides (model, seed, the experiment's Trainer
        options), its logs and checkpoints placed in its folder, and a resume from the checkpoint a
        killed run of the stage left there."""
        config = load_stage_config(self.config.stage_file(stage, name))
        config["seed_everything"] = self.config.seed
        trainer = config.setdefault("trainer", {})
        trainer.update(self.config.trainer)
        # The stage file's default_root_dir is for running it alone; the experiment's own wins.
        # Loggers with a relative save_dir (the configs' `.`) follow it into the stage folder.
        trainer["default_root_dir"] = self.config.trainer.get("default_root_dir", str(folder / "logs"))
        if with_model and "pretrained_model_name_or_path" in model_args(config):
            model_args(config)["pretrained_model_name_or_path"] = self.config.model
        self._resume(config, folder)
        return config

    @staticmethod
    def _resume(config: dict[str, Any], folder: Path) -> None:
        """Put the stage's checkpoints in ``folder/checkpoints`` and resume from the last one there
        (an experiment that sets ``trainer.enable_checkpointing: false`` drops them instead)."""
        if config["trainer"].get("enable_checkpointing") is False:
            drop_callback(config, TrainingCheckpoint)
            return
        for callback in (config.get("trainer") or {}).get("callbacks") or []:
            if not (isinstance(callback, dict) and "class_path" in callback):
                continue
            if not issubclass(resolve_class(callback["class_path"]), TrainingCheckpoint):
                continue
            init_args = callback.setdefault("init_args", {})
            init_args.setdefault("dirpath", str(folder / CHECKPOINTS))
            last = Path(init_args["dirpath"]) / LAST_CHECKPOINT
            if last.is_file() and last.resolve().is_relative_to(folder.resolve()):
                config["ckpt_path"] = str(last)
                config["weights_only"] = True

    def _common(self, stage: str, name: str = "") -> dict[str, Any]:
        return {
            "stage": stage,
            "config": file_fingerprint(self.config.stage_file(stage, name)),
            "model": self.config.model,
            "seed": self.config.seed,
            "trainer": self.config.trainer,
        }

    def _add(self, key: tuple[str, ...], what: dict[str, Any], work: Callable, label: str, **outputs: str) -> Stage:
        if key not in self.stages:
            folder = self.store.path(*key)
            self.stages[key] = Stage(
                key=key,
                fingerprint=fingerprint({**what, "lightning_cat": __version__}),
                work=work,
                label=label,
                outputs={name: folder / relative for name, relative in outputs.items()},
            )
        return self.stages[key]

    # ------------------------------------------------------------------ the stages

    def _subject(self, subject: str) -> Stage:
        sources = self.config.subjects[subject]
        surrogate = self.config.surrogate_sets.get(subject)
        size = self.config.subject_size
        what = {"stage": "subject", "sources": subject_fingerprint(sources, size)}
        outputs = {"images": "images"}
        if surrogate:
            what["surrogate_clean"] = subject_fingerprint(surrogate, size)
            outputs["surrogate_clean"] = "surrogate_clean"

        def work(folder: Path) -> dict[str, Any]:
            info = materialize_subject(sources, size, folder)
            if surrogate:
                info["surrogate_clean"] = materialize_subject(surrogate, size, folder, "surrogate_clean")["images"]
            return info

        return self._add(("subjects", subject), what, work, f"subject {subject}", **outputs)

    def _protect(self, subject: str, protection: ProtectionCell) -> Stage:
        source = self._subject(subject)
        if protection.is_clean:
            return source

        def work(folder: Path) -> None:
            config = self._stage_config("protect", protection.method, folder)
            model_args(config).update(dict(protection.options))  # the sweep point, if any
            if "surrogate_clean" in source.outputs and protection_class(protection.method).coupled:
                model_args(config)["surrogate_clean_root"] = str(source.outputs["surrogate_clean"])
            model_args(config)["output_dir"] = str(folder / "images")
            data_args(config)["root"] = str(source.outputs["images"])
            self.run_stage("fit", config, folder)

        what = {**self._common("protect", protection.method), "input": source.fingerprint}
        if protection.options:
            what["options"] = dict(protection.options)
        key = ("protect", subject, _slug(protection.name))
        return self._add(key, what, work, f"protect {subject}/{protection.name}", images="images")

    def _purify(self, subject: str, protection: ProtectionCell, purifier: str) -> Stage:
        source = self._protect(subject, protection)

        def work(folder: Path) -> None:
            config = self._stage_config("purify", purifier, folder)
            spec = model_args(config).get("purifier") or {}
            purifier_args = spec.get("init_args") or {}
            # A model-based purifier configured with a null model purifies with the customization model.
            if (
                "pretrained_model_name_or_path" in purifier_args
                and purifier_args["pretrained_model_name_or_path"] is None
            ):
                purifier_args["pretrained_model_name_or_path"] = self.config.model
            callback_args(config, PurifiedSetWriter)["output_dir"] = str(folder / "images")
            data_args(config)["root"] = str(source.outputs["images"])
            config["return_predictions"] = False
            self.run_stage("predict", config, folder)

        what = {**self._common("purify", purifier), "input": source.fingerprint}
        key = ("purify", subject, _slug(protection.name), purifier)
        return self._add(key, what, work, f"purify {subject}/{protection.name}/{purifier}", images="images")

    def _training_images(self, subject: str, protection: ProtectionCell, defense: Defense) -> Stage:
        if defense.purify:
            return self._purify(subject, protection, defense.purify)
        return self._protect(subject, protection)

    def _cat(self, subject: str, protection: ProtectionCell, defense: Defense) -> Stage:
        source = self._training_images(subject, protection, defense)
        variant = defense.cat

        def work(folder: Path) -> None:
            config = self._stage_config("cat", variant, folder)
            model_args(config)["output_dir"] = str(folder / "adapter")
            data_args(config)["root"] = str(source.outputs["images"])
            self.run_stage("fit", config, folder)

        tag = _slug(protection.name) + (f".purify-{defense.purify}" if defense.purify else "")
        what = {**self._common("cat", variant), "input": source.fingerprint}
        return self._add(
            ("cat", subject, tag, variant), what, work, f"CAT {subject}/{tag}/{variant}", adapter="adapter"
        )

    def _class_images(self, customization: str) -> Stage | None:
        config = load_stage_config(self.config.stage_file("customize", customization))
        data = data_args(config)
        if not data.get("class_root"):
            return None
        generation = {k: v for k, v in model_args(config).items() if k.startswith("class_generation")}
        what = {
            "stage": "class_images",
            "model": self.config.model,
            "seed": self.config.seed,
            "trainer": self.config.trainer,
            "data": {k: data.get(k) for k in ("class_prompt", "num_class_images", "resolution", "interpolation")},
            "generation": generation,
        }
        subject_images = self._subject(next(iter(self.config.subjects))).outputs["images"]

        def work(folder: Path) -> None:
            # A zero-step fit of the customization config: its prepare_data generates the class
            # images with exactly the options (and devices) the customization itself would use.
            run_config = self._stage_config("customize", customization, folder)
            run_config["trainer"]["max_steps"] = 0
            model_args(run_config)["output_dir"] = None
            model_args(run_config)["cat_adapter"] = None
            data_args(run_config)["class_root"] = str(folder / "images")
            data_args(run_config)["instance_root"] = str(subject_images)
            self.run_stage("fit", run_config, folder)

        key = ("class_images", customization)
        return self._add(key, what, work, f"class images {customization}", images="images")

    def _customize(self, subject: str, protection: ProtectionCell, defense: Defense, customization: str) -> Stage:
        images = self._training_images(subject, protection, defense)
        cat = self._cat(subject, protection, defense) if defense.cat else None
        prior = self._class_images(customization)

        def work(folder: Path) -> None:
            config = self._stage_config("customize", customization, folder)
            model = model_args(config)
            model["output_dir"] = str(folder / "model")
            model["cat_adapter"] = str(cat.outputs["adapter"]) if cat else None
            model["cdl"] = defense.cdl
            data = data_args(config)
            data["instance_root"] = str(images.outputs["images"])
            if prior is not None:
                data["class_root"] = str(prior.outputs["images"])
            self.run_stage("fit", config, folder)

        what = {
            **self._common("customize", customization),
            "images": images.fingerprint,
            "cat": cat.fingerprint if cat else None,
            "class_images": prior.fingerprint if prior else None,
            "cdl": defense.cdl,
        }
        key = ("customize", subject, _slug(protection.name), _slug(defense.name), customization)
        return self._add(key, what, work, f"customize {'/'.join(key[1:])}", model="model")

    def _sample(self, subject: str, protection: ProtectionCell, defense: Defense, customization: str) -> Stage:
        base = customization == BASE_MODEL  # the model itself: nothing to customize
        model = None if base else self._customize(subject, protection, defense, customization)

        def work(folder: Path) -> None:
            config = self._stage_config("sample", "", folder, with_model=False)
            path = self.config.model if model is None else str(model.outputs["model"])
            model_args(config)["pretrained_model_name_or_path"] = path
            callback_args(config, SampleWriter)["output_dir"] = str(folder / "samples")
            config["return_predictions"] = False
            self.run_stage("predict", config, folder)

        what = {**self._common("sample"), "model": self.config.model if model is None else model.fingerprint}
        key = ("sample", subject, _slug(protection.name), _slug(defense.name), customization)
        return self._add(key, what, work, f"sample {'/'.join(key[1:])}", samples="samples")

    def _evaluate(self, subject: str, protection: ProtectionCell, defense: Defense, customization: str) -> Stage:
        clean = self._subject(subject)
        images = self._training_images(subject, protection, defense)
        samples = self._sample(subject, protection, defense, customization)
        protected = None if protection.is_clean and not defense.purify else images
        cat = self._cat(subject, protection, defense) if defense.cat else None

        def work(folder: Path) -> dict[str, Any]:
            record = json.loads((samples.outputs["samples"] / "samples.json").read_text())
            results = []
            for index, prompt in enumerate(record["prompts"]):
                run_folder = folder / f"prompt{index}"
                config = self._stage_config("evaluate", "", run_folder, with_model=False)
                data = data_args(config)
                data["clean_root"] = str(clean.outputs["images"])
                data["protected_root"] = str(protected.outputs["images"]) if protected else None
                data["generated_root"] = str(samples.outputs["samples"] / prompt["folder"])
                drop_callback(config, LatentDistortionCallback)  # the config's own: replaced by the cell's VAEs
                if protected is not None:
                    latent = {"pretrained_model_name_or_path": self.config.model, "keys": LATENT_DISTORTION_KEYS}
                    if cat is not None:
                        latent["cat_adapter"] = str(cat.outputs["adapter"])
                    add_callback(config, LatentDistortionCallback, **latent)
                else:  # nothing to compare with the clean images: no protected-image columns (not NaNs)
                    drop_callback(config, ProtectedImageEvaluator)
                add_callback(config, MetricsWriter, path=str(run_folder / "metrics.json"))
                self.run_stage("test", config, run_folder)
                metrics = json.loads((run_folder / "metrics.json").read_text())  # names sorted
                results.append({"prompt": prompt["prompt"], **{_column(k): _number(v) for k, v in metrics.items()}})
            atomic_write_json(folder / "metrics.json", results)
            return {"prompts": len(results)}

        what = {
            **self._common("evaluate"),
            "clean": clean.fingerprint,
            "images": images.fingerprint,
            "samples": samples.fingerprint,
            "cat": cat.fingerprint if cat else None,
            "latent_distortion": LATENT_DISTORTION_KEYS,
        }
        key = ("evaluate", subject, _slug(protection.name), _slug(defense.name), customization)
        stage = self._add(key, what, work, f"evaluate {'/'.join(key[1:])}", metrics="metrics.json")
        self.cells.append(
            Cell(
                subject=subject,
                protection=protection.name,
                method=protection.method,
                defense=defense.name,
                customization=customization,
                clean=clean,
                protected=self._protect(subject, protection),
                images=images,
                samples=samples,
                evaluate=stage,
            )
        )
        return stage
