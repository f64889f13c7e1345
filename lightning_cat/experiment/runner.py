"""The protocol runner: protect -> defend -> customize -> sample -> evaluate, over a grid.

Each cell of ``subjects x protections x defenses x customizations`` is a chain of stages; stages
shared between cells run once (one protected set per subject and method, one purified set and
one CAT adapter per input set, one class-image set per customization config). Every stage is a
``lightning-cat`` run of its own config file with a few overrides (see
:mod:`lightning_cat.experiment.stages`), executed through a :class:`StageStore`, so re-running
resumes, a changed config reruns exactly the stages it affects, and nothing half-written is used.

Run directory::

    experiment.yaml                    the resolved experiment
    subjects/<subject>/                clean images
    protect/<subject>/<protection>/    images/ (protected set + manifest.json), logs/
    purify/<subject>/<protection>/<purifier>/images/
    cat/<subject>/<input>/<variant>/adapter/
    class_images/<customization>/images/
    customize/<subject>/<protection>/<defense>/<customization>/model/
    sample/<subject>/<protection>/<defense>/<customization>/samples/
    evaluate/<subject>/<protection>/<defense>/<customization>/metrics.json
    results.csv, results.json, report.md, report.html, plots/, grids/
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lightning_cat.atomic import atomic_write_json
from lightning_cat.experiment.config import CLEAN_PROTECTIONS, SKIMAGE_PREFIX, Defense, ExperimentConfig
from lightning_cat.experiment.report import image_grid, write_report, write_results
from lightning_cat.experiment.stages import StageCommand, callback_args, data_args, load_stage_config, model_args
from lightning_cat.experiment.store import StageResult, StageStore, file_fingerprint, fingerprint
from lightning_cat.images import list_images

__all__ = ["ExperimentRunner", "run_experiment"]


@dataclass
class _Stage:
    """A planned stage: where it goes, what determines it, what it does."""

    key: tuple[str, ...]
    fingerprint: str
    work: Any
    label: str
    result: StageResult | None = None
    outputs: dict[str, Path] = field(default_factory=dict)


#: What the evaluate stage logs of :class:`~lightning_cat.metrics.LatentDistortion` for the images a
#: customization trained on (protected, purified): ``test/base/*`` under the model's VAE and, for a
#: CAT defense, ``test/cat/*`` under the CAT-adapted VAE.
LATENT_DISTORTION_KEYS = ["latent_mse_relative", "recon_psnr"]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.+" else "-" for ch in text)


def _materialize_subject(sources: list[str], size: int, folder: Path) -> dict[str, Any]:
    from PIL import Image

    images = folder / "images"
    images.mkdir()
    for source in sources:
        if source.startswith(SKIMAGE_PREFIX):
            from skimage import data

            name = source[len(SKIMAGE_PREFIX) :]
            if not hasattr(data, name):
                raise ValueError(f"scikit-image has no sample image {name!r}")
            image = Image.fromarray(getattr(data, name)()).convert("RGB")
            scale = size / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
            image.save(images / f"{name}.png")
        else:
            for path in list_images(source, what="subject image folder"):
                shutil.copyfile(path, images / path.name)
    list_images(images, what="subject image folder")  # duplicate stems across sources fail here
    return {"images": len(list(images.iterdir()))}


def _source_fingerprint(sources: list[str], size: int) -> str:
    parts = []
    for source in sources:
        if source.startswith(SKIMAGE_PREFIX):
            parts.append(source)
        else:
            parts.append({p.name: file_fingerprint(p) for p in list_images(source, what="subject image folder")})
    return fingerprint({"sources": parts, "size": size})


def _read_csv_metrics(logs: Path) -> dict[str, float]:
    values: dict[str, float] = {}
    for file in sorted(logs.rglob("metrics.csv")):
        with open(file) as handle:
            for row in csv.DictReader(handle):
                for key, value in row.items():
                    if key in ("epoch", "step") or value in ("", None):
                        continue
                    values[key.split("/", 1)[-1]] = float(value)
    return values


class ExperimentRunner:
    """Plans and runs an experiment's stages, then writes the results table and the report.

    Args:
        config: a loaded :class:`ExperimentConfig`.
        overwrite: redo every stage even if it finished with the same fingerprint.
        stage_process: ``auto`` runs stages in this process unless the Trainer options need a
            launcher that re-executes the command (several devices or nodes with a non-spawn
            strategy), ``inprocess`` / ``subprocess`` force one way.
        verbose: show each stage's console output; by default it goes to ``stage.log`` in the
            stage's folder (its last lines are printed if the stage fails).
    """

    def __init__(
        self, config: ExperimentConfig, overwrite: bool = False, stage_process: str = "auto", verbose: bool = False
    ) -> None:
        if stage_process not in ("auto", "inprocess", "subprocess"):
            raise ValueError(f"stage_process={stage_process!r} is not one of ['auto', 'inprocess', 'subprocess']")
        self.config = config
        self.store = StageStore(config.run_dir, overwrite=overwrite)
        self.subprocess_mode = stage_process == "subprocess" or (stage_process == "auto" and self._needs_launcher())
        self.verbose = verbose
        self._stages: dict[tuple[str, ...], _Stage] = {}
        self._cells: list[dict[str, Any]] = []
        #: Stages run (not skipped) by the last :meth:`run`, as ``"/"``-joined keys.
        self.executed: list[str] = []

    def _needs_launcher(self) -> bool:
        trainer = self.config.trainer
        devices = trainer.get("devices", 1)
        several = devices in ("auto", -1) or (isinstance(devices, int) and devices > 1) or isinstance(devices, list)
        several = several or int(trainer.get("num_nodes", 1)) > 1
        return several and "spawn" not in str(trainer.get("strategy", "ddp"))

    # ------------------------------------------------------------------ stage configs

    def _stage_config(self, stage: str, name: str, folder: Path, *, with_model: bool = True) -> dict[str, Any]:
        """The stage's own config with the run-wide overrides (model, seed, Trainer, logs)."""
        config = load_stage_config(self.config.stage_file(stage, name))
        config["seed_everything"] = self.config.seed
        trainer = config.setdefault("trainer", {})
        trainer.update(self.config.trainer)
        trainer["default_root_dir"] = str(folder / "logs")
        trainer["enable_checkpointing"] = False
        trainer["logger"] = {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(folder / "logs"), "name": "", "version": ""},
        }
        if with_model and "pretrained_model_name_or_path" in model_args(config):
            model_args(config)["pretrained_model_name_or_path"] = self.config.model
        return config

    def _run(self, subcommand: str, config: dict[str, Any], folder: Path) -> None:
        log_file = None if self.verbose else folder / "stage.log"
        StageCommand(subcommand, config, folder, subprocess_mode=self.subprocess_mode, log_file=log_file).run()

    def _common(self, stage: str, name: str = "") -> dict[str, Any]:
        return {
            "stage": stage,
            "config": file_fingerprint(self.config.stage_file(stage, name)),
            "model": self.config.model,
            "seed": self.config.seed,
            "trainer": self.config.trainer,
        }

    def _add(self, key: tuple[str, ...], what: dict[str, Any], work: Any, label: str) -> _Stage:
        if key not in self._stages:
            self._stages[key] = _Stage(key=key, fingerprint=fingerprint(what), work=work, label=label)
        return self._stages[key]

    # ------------------------------------------------------------------ planning

    def _subject(self, subject: str) -> _Stage:
        sources = self.config.subjects[subject]
        what = {"stage": "subject", "sources": _source_fingerprint(sources, self.config.subject_size)}
        stage = self._add(
            ("subjects", subject),
            what,
            lambda folder: _materialize_subject(sources, self.config.subject_size, folder),
            f"subject {subject}",
        )
        stage.outputs["images"] = self.store.path(*stage.key) / "images"
        return stage

    def _protect(self, subject: str, protection: str) -> _Stage:
        source = self._subject(subject)
        if protection in CLEAN_PROTECTIONS:
            return source

        def work(folder: Path) -> None:
            config = self._stage_config("protect", protection, folder)
            model_args(config)["output_dir"] = str(folder / "images")
            data_args(config)["root"] = str(source.outputs["images"])
            self._run("fit", config, folder)

        what = {**self._common("protect", protection), "input": source.fingerprint}
        stage = self._add(("protect", subject, protection), what, work, f"protect {subject}/{protection}")
        stage.outputs["images"] = self.store.path(*stage.key) / "images"
        return stage

    def _purify(self, subject: str, protection: str, purifier: str) -> _Stage:
        source = self._protect(subject, protection)

        def work(folder: Path) -> None:
            config = self._stage_config("purify", purifier, folder)
            spec = model_args(config).get("purifier") or {}
            purifier_args = spec.get("init_args") or {}
            # Latent purifiers work in the customization model's latent space, so they follow the
            # run's model; the x4 upscaler is a model of its own and keeps its config's.
            in_latent_space = "Upscale" not in str(spec.get("class_path", ""))
            if in_latent_space and "pretrained_model_name_or_path" in purifier_args:
                purifier_args["pretrained_model_name_or_path"] = self.config.model
            callback_args(config, "PurifiedSetWriter")["output_dir"] = str(folder / "images")
            data_args(config)["root"] = str(source.outputs["images"])
            config["return_predictions"] = False
            self._run("predict", config, folder)

        what = {**self._common("purify", purifier), "input": source.fingerprint}
        stage = self._add(
            ("purify", subject, protection, purifier), what, work, f"purify {subject}/{protection}/{purifier}"
        )
        stage.outputs["images"] = self.store.path(*stage.key) / "images"
        return stage

    def _training_images(self, subject: str, protection: str, defense: Defense) -> _Stage:
        if defense.purify:
            return self._purify(subject, protection, defense.purify)
        return self._protect(subject, protection)

    def _cat(self, subject: str, protection: str, defense: Defense) -> _Stage:
        source = self._training_images(subject, protection, defense)
        variant = defense.cat

        def work(folder: Path) -> None:
            config = self._stage_config("cat", variant, folder)
            model_args(config)["output_dir"] = str(folder / "adapter")
            data_args(config)["root"] = str(source.outputs["images"])
            self._run("fit", config, folder)

        tag = protection + (f".purify-{defense.purify}" if defense.purify else "")
        what = {**self._common("cat", variant), "input": source.fingerprint}
        stage = self._add(("cat", subject, tag, variant), what, work, f"CAT {subject}/{tag}/{variant}")
        stage.outputs["adapter"] = self.store.path(*stage.key) / "adapter"
        return stage

    def _class_images(self, customization: str) -> _Stage | None:
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
            # A zero-step fit of the customization config: prepare_data generates the class images
            # with exactly the options (and devices) the customization itself would use.
            run_config = self._stage_config("customize", customization, folder)
            run_config["trainer"]["max_steps"] = 0
            model_args(run_config)["output_dir"] = None
            model_args(run_config)["cat_adapter"] = None
            data_args(run_config)["class_root"] = str(folder / "images")
            data_args(run_config)["instance_root"] = str(subject_images)
            self._run("fit", run_config, folder)

        stage = self._add(("class_images", customization), what, work, f"class images {customization}")
        stage.outputs["images"] = self.store.path(*stage.key) / "images"
        return stage

    def _customize(self, subject: str, protection: str, defense: Defense, customization: str) -> _Stage:
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
            self._run("fit", config, folder)

        what = {
            **self._common("customize", customization),
            "images": images.fingerprint,
            "cat": cat.fingerprint if cat else None,
            "class_images": prior.fingerprint if prior else None,
            "cdl": defense.cdl,
        }
        key = ("customize", subject, protection, _slug(defense.name), customization)
        stage = self._add(key, what, work, f"customize {'/'.join(key[1:])}")
        stage.outputs["model"] = self.store.path(*key) / "model"
        return stage

    def _sample(self, subject: str, protection: str, defense: Defense, customization: str) -> _Stage:
        model = self._customize(subject, protection, defense, customization)

        def work(folder: Path) -> None:
            config = self._stage_config("sample", "", folder, with_model=False)
            model_args(config)["pretrained_model_name_or_path"] = str(model.outputs["model"])
            callback_args(config, "SampleWriter")["output_dir"] = str(folder / "samples")
            config["return_predictions"] = False
            self._run("predict", config, folder)

        what = {**self._common("sample"), "model": model.fingerprint}
        key = ("sample", subject, protection, _slug(defense.name), customization)
        stage = self._add(key, what, work, f"sample {'/'.join(key[1:])}")
        stage.outputs["samples"] = self.store.path(*key) / "samples"
        return stage

    def _evaluate(self, subject: str, protection: str, defense: Defense, customization: str) -> _Stage:
        clean = self._subject(subject)
        images = self._training_images(subject, protection, defense)
        samples = self._sample(subject, protection, defense, customization)
        protected = None if protection in CLEAN_PROTECTIONS and not defense.purify else images
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
                if protected is not None:
                    _add_latent_distortion(config, self.config.model, cat.outputs["adapter"] if cat else None)
                else:  # nothing to compare with the clean images: no protected-image columns (not NaNs)
                    _drop_callback(config, "ProtectedImageEvaluator")
                self._run("test", config, run_folder)
                results.append({"prompt": prompt["prompt"], **_read_csv_metrics(run_folder / "logs")})
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
        key = ("evaluate", subject, protection, _slug(defense.name), customization)
        stage = self._add(key, what, work, f"evaluate {'/'.join(key[1:])}")
        stage.outputs["metrics"] = self.store.path(*key) / "metrics.json"
        self._cells.append(
            {
                "subject": subject,
                "protection": protection,
                "defense": defense.name,
                "customization": customization,
                "evaluate": stage,
                "samples": samples,
                "images": images,
                "protected": self._protect(subject, protection),
                "clean": clean,
            }
        )
        return stage

    def plan(self) -> list[_Stage]:
        """Every stage of the grid, in an order that respects their dependencies."""
        if not self._stages:
            for subject in self.config.subjects:
                for protection in self.config.protections:
                    for defense in self.config.defenses:
                        for customization in self.config.customizations:
                            self._evaluate(subject, protection, defense, customization)
        return list(self._stages.values())

    # ------------------------------------------------------------------ running

    def run(self) -> Path:
        """Run (or resume) every stage, then write results and report; returns ``report.html``."""
        stages = self.plan()
        run_dir = Path(self.config.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "experiment.json", self._describe())
        progress = tqdm(stages, desc="experiment", unit="stage", position=0)
        for stage in progress:
            progress.set_postfix_str(stage.label)
            stage.result = self.store.run(stage.key, stage.fingerprint, stage.work)
            if not stage.result.skipped:
                self.executed.append("/".join(stage.key))
        progress.close()
        return self.report()

    def _describe(self) -> dict[str, Any]:
        c = self.config
        return {
            "source": c.source,
            "model": c.model,
            "seed": c.seed,
            "subjects": c.subjects,
            "protections": c.protections,
            "defenses": [d.name for d in c.defenses],
            "customizations": c.customizations,
            "stage_files": c.stage_files,
            "trainer": c.trainer,
            "stages": [{"key": "/".join(s.key), "fingerprint": s.fingerprint} for s in self._stages.values()],
        }

    def rows(self) -> list[dict[str, Any]]:
        """One results row per (subject, protection, defense, customization, prompt)."""
        rows = []
        for cell in self._cells:
            budget = self._budget(cell["protected"], cell["protection"])
            for result in json.loads(cell["evaluate"].outputs["metrics"].read_text()):
                ids = {k: cell[k] for k in ("subject", "protection", "defense", "customization")}
                rows.append({**ids, "prompt": result.pop("prompt"), **budget, **result})
        return rows

    @staticmethod
    def _budget(protected: _Stage, protection: str) -> dict[str, Any]:
        if protection in CLEAN_PROTECTIONS:
            return {"eps_255": 0.0, "linf_255": 0.0}
        manifest = json.loads((protected.outputs["images"] / "manifest.json").read_text())
        measured = [entry["linf_255"] for entry in manifest["files"].values()]
        return {"eps_255": float(manifest["eps_255"]), "linf_255": float(max(measured))}

    def _grids(self) -> list[Path]:
        grids = []
        run_dir = Path(self.config.run_dir)
        defenses = [d.name for d in self.config.defenses]
        for subject in self.config.subjects:
            for customization in self.config.customizations:
                rows = []
                for protection in self.config.protections:
                    cells = {
                        c["defense"]: c
                        for c in self._cells
                        if (c["subject"], c["protection"], c["customization"]) == (subject, protection, customization)
                    }
                    first = next(iter(cells.values()))
                    clean = sorted(first["clean"].outputs["images"].iterdir())[0]
                    protected = first["protected"].outputs["images"] / f"{clean.stem}.png"
                    samples = []
                    for defense in defenses:
                        record = json.loads((cells[defense]["samples"].outputs["samples"] / "samples.json").read_text())
                        folder = cells[defense]["samples"].outputs["samples"] / record["prompts"][0]["folder"]
                        samples.append(sorted(folder.glob("*.png"))[0])
                    rows.append((protection, [clean, protected if protected.is_file() else clean, *samples]))
                columns = ["clean", "protected"] + defenses
                grids.append(image_grid(rows, columns, run_dir / "grids" / f"{_slug(subject)}-{customization}.png"))
        return grids

    def report(self) -> Path:
        """Write results.csv/json, plots, grids, report.md and report.html into the run directory."""
        run_dir = Path(self.config.run_dir)
        rows = self.rows()
        write_results(rows, run_dir)
        finite = sum(1 for r in rows for v in r.values() if isinstance(v, float) and math.isfinite(v))
        notes = [
            f"model: {self.config.model}; seed {self.config.seed}; {len(rows)} rows, {finite} finite values",
            "image grids: a clean image, its protected version, then one sample per defense (first prompt)",
            f"experiment: {self.config.source}",
            "eps_255 is the protection's budget, linf_255 the largest L_inf measured on its saved PNGs (in /255)",
        ]
        _, html = write_report(
            rows, run_dir, title=f"lightning-cat: {Path(self.config.run_dir).name}", notes=notes, grids=self._grids()
        )
        return html


def run_experiment(config: ExperimentConfig, overwrite: bool = False, stage_process: str = "auto") -> Path:
    """Run (or resume) ``config``; returns the path of ``report.html``."""
    return ExperimentRunner(config, overwrite=overwrite, stage_process=stage_process).run()


def _drop_callback(config: dict[str, Any], class_name: str) -> None:
    trainer = config.get("trainer") or {}
    trainer["callbacks"] = [
        c
        for c in trainer.get("callbacks") or []
        if not (isinstance(c, dict) and str(c.get("class_path", "")).split(".")[-1] == class_name)
    ]


def _add_latent_distortion(config: dict[str, Any], model: str, cat_adapter: Path | None) -> None:
    callbacks = config.setdefault("trainer", {}).setdefault("callbacks", [])
    init_args = {"pretrained_model_name_or_path": model, "keys": LATENT_DISTORTION_KEYS}
    if cat_adapter is not None:
        init_args["cat_adapter"] = str(cat_adapter)
    callbacks.append({"class_path": "lightning_cat.callbacks.LatentDistortionCallback", "init_args": init_args})
