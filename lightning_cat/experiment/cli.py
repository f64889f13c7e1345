"""``lightning-cat experiment``: run (or resume) a whole grid from one experiment YAML.

The experiment's entries are typed arguments (:func:`~lightning_cat.experiment.config.experiment_options`),
so the command takes what the stage commands take: ``--print_config``, dotted overrides::

    lightning-cat experiment --config configs/experiment/demo.yaml --plan
    lightning-cat experiment --config configs/experiment/demo.yaml --trainer.max_steps 3 --protections '[clean]'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["experiment_main"]


def experiment_main(args: Sequence[str]) -> None:
    """Entry point of ``lightning-cat experiment``."""
    from lightning_cat.experiment.config import ExperimentConfigError, experiment_parser, resolve_experiment
    from lightning_cat.experiment.runner import ExperimentRunner

    parser = experiment_parser()
    options = parser.parse_args(list(args))  # a bad type or entry: usage and the error, exit status 2
    try:
        # Planning reads config files only: a paper's grid can be listed before its subjects exist.
        config = resolve_experiment(options, require_subjects=not options.plan)
    except ExperimentConfigError as error:
        parser.error(str(error))
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
