"""The protocol runner: plan the grid's stages, run (or resume) them, write the results and the report.

Every stage is a ``lightning-cat`` run of its own config file with a few overrides (see
:mod:`lightning_cat.experiment.plan`), executed through a :class:`StageStore`, so re-running
resumes, a changed config reruns exactly the stages it affects, and nothing half-written is used.
The results table is built from the stages' outputs (:mod:`lightning_cat.experiment.results`) and
the report from the table (:mod:`lightning_cat.experiment.report`). The run directory holds, beside
the stages' folders, ``experiment.json``, ``results.csv``, ``results.json``, ``report.md``,
``report.html``, ``plots/`` and ``grids/``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from lightning_cat import __version__
from lightning_cat.atomic import atomic_write_json, check_writable
from lightning_cat.experiment.config import ExperimentConfig
from lightning_cat.experiment.plan import ExperimentPlan, Stage
from lightning_cat.experiment.report import cell_grids, write_report, write_results
from lightning_cat.experiment.results import result_rows
from lightning_cat.experiment.stages import StageCommand
from lightning_cat.experiment.store import StageStore

__all__ = ["ExperimentRunner", "run_experiment"]

StageProcess = Literal["auto", "inprocess", "subprocess"]


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
        self,
        config: ExperimentConfig,
        overwrite: bool = False,
        stage_process: StageProcess = "auto",
        verbose: bool = False,
    ) -> None:
        if stage_process not in ("auto", "inprocess", "subprocess"):
            raise ValueError(f"stage_process={stage_process!r} is not one of ['auto', 'inprocess', 'subprocess']")
        self.config = config
        self.store = StageStore(config.run_dir, overwrite=overwrite)
        self.subprocess_mode = stage_process == "subprocess" or (stage_process == "auto" and self._needs_launcher())
        self.verbose = verbose
        self._plan: ExperimentPlan | None = None
        #: Stages run (not skipped) by the last :meth:`run`, as ``"/"``-joined keys.
        self.executed: list[str] = []

    def _needs_launcher(self) -> bool:
        trainer = self.config.trainer
        devices = trainer.get("devices", 1)
        several = devices in ("auto", -1) or (isinstance(devices, int) and devices > 1) or isinstance(devices, list)
        several = several or int(trainer.get("num_nodes", 1)) > 1
        return several and "spawn" not in str(trainer.get("strategy", "ddp"))

    def _run_stage(self, subcommand: str, config: dict[str, Any], folder: Path) -> None:
        log_file = None if self.verbose else folder / "stage.log"
        StageCommand(subcommand, config, folder, subprocess_mode=self.subprocess_mode, log_file=log_file).run()

    @property
    def experiment_plan(self) -> ExperimentPlan:
        """The grid's stages and cells (planned once; reads config files, touches no model)."""
        if self._plan is None:
            self._plan = ExperimentPlan(self.config, self.store, self._run_stage)
        return self._plan

    def plan(self) -> list[Stage]:
        """Every stage of the grid, in an order that respects their dependencies."""
        return list(self.experiment_plan.stages.values())

    def run(self) -> Path:
        """Run (or resume) every stage, then write results and report; returns ``report.html``."""
        run_dir = check_writable(self.config.run_dir, owner="experiment run_dir")
        stages = self.plan()
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
            "lightning_cat_version": __version__,
            "model": c.model,
            "seed": c.seed,
            "subjects": c.subjects,
            "protections": c.protections,
            "defenses": [d.name for d in c.defenses],
            "customizations": c.customizations,
            "stage_files": c.stage_files,
            "trainer": c.trainer,
            "stages": [{"key": "/".join(s.key), "fingerprint": s.fingerprint} for s in self.plan()],
        }

    def rows(self) -> list[dict[str, Any]]:
        """One results row per (subject, protection, defense, customization, prompt)."""
        return result_rows(self.experiment_plan.cells)

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
        grids = cell_grids(self.experiment_plan.cells, [d.name for d in self.config.defenses], run_dir)
        _, html = write_report(rows, run_dir, title=f"lightning-cat: {run_dir.name}", notes=notes, grids=grids)
        return html


def run_experiment(config: ExperimentConfig, overwrite: bool = False, stage_process: StageProcess = "auto") -> Path:
    """Run (or resume) ``config``; returns the path of ``report.html``."""
    return ExperimentRunner(config, overwrite=overwrite, stage_process=stage_process).run()
