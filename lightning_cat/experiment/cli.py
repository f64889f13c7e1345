"""``lightning-cat experiment``: run (or resume) a whole grid from one experiment YAML."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

__all__ = ["experiment_main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-cat experiment",
        description="Run the protocol protect -> defend -> customize -> sample -> evaluate over a grid. "
        "Re-running resumes: finished stages are skipped, stages whose config changed are redone.",
    )
    parser.add_argument("--config", required=True, help="experiment YAML (e.g. configs/experiment/demo.yaml)")
    parser.add_argument("--run_dir", default=None, help="override the config's run_dir")
    parser.add_argument("--overwrite", action="store_true", help="redo every stage")
    parser.add_argument(
        "--stage_process",
        choices=["auto", "inprocess", "subprocess"],
        default="auto",
        help="run stages in this process or in subprocesses (auto: subprocesses only when the Trainer "
        "options need a re-executing launcher, e.g. devices > 1 with strategy ddp)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show each stage's own output (default: it goes to stage.log in the stage's folder)",
    )
    parser.add_argument("--plan", action="store_true", help="list the stages and whether they are done, then exit")
    return parser


def experiment_main(args: Sequence[str]) -> None:
    """Entry point of ``lightning-cat experiment``."""
    options = _parser().parse_args(list(args))
    from lightning_cat.experiment.config import load_experiment_config
    from lightning_cat.experiment.runner import ExperimentRunner

    # Planning reads config files only: a paper's grid can be listed before its subjects exist.
    config = load_experiment_config(options.config, {"run_dir": options.run_dir}, require_subjects=not options.plan)
    runner = ExperimentRunner(
        config, overwrite=options.overwrite, stage_process=options.stage_process, verbose=options.verbose
    )
    if options.plan:
        stages = runner.plan()
        for stage in stages:
            done = runner.store.is_complete(stage.key, stage.fingerprint) and not options.overwrite
            print(f"{'done   ' if done else 'pending'}  {'/'.join(stage.key)}")
        cells = runner.experiment_plan.cells
        print(f"{len(stages)} stages, {len(cells)} cells ({len(config.subjects)} subjects)")
        missing = [s for sources in config.subjects.values() for s in sources if not s.startswith("skimage:")]
        missing = [s for s in missing if not Path(s).is_dir()]
        if missing:
            print("subject folders still missing (needed to run): " + ", ".join(missing))
        return
    report = runner.run()
    print(f"report: {report}")
