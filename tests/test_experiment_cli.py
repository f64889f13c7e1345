"""``lightning-cat experiment`` on jsonargparse: --print_config, dotted overrides, typed and domain errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_cat.cli import main
from lightning_cat.experiment import load_experiment_config

DEMO = str(Path(__file__).resolve().parents[1] / "configs/experiment/demo.yaml")


def test_print_config_shows_the_overridden_experiment_and_loads_back(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", "--config", DEMO, "--trainer.max_steps", "3", "--seed", "7", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"] == {"accelerator": "cpu", "devices": 1, "max_steps": 3}
    assert printed["seed"] == 7 and printed["protections"] == ["clean", "advdm_plus"]
    assert printed["skip"] == ["clean/purify:tv+cdl"] and printed["base_model"] is True
    # The printed config is a valid experiment (its stage paths are relative to the demo's folder).
    copy = Path(DEMO).with_name(f"printed-{tmp_path.name}.yaml")
    try:
        copy.write_text(yaml.safe_dump(printed))
        config = load_experiment_config(copy)
    finally:
        copy.unlink()
    assert config.trainer["max_steps"] == 3 and config.seed == 7


def test_dotted_overrides_reach_the_plan(capsys, tmp_path):
    main(
        ["experiment", "--config", DEMO, "--plan", "--protections", "[clean]", "--defenses", "[none, cat:both]"]
        + ["--skip", "[]", "--run_dir", str(tmp_path / "run"), "--trainer.max_steps", "3"]
    )
    out = capsys.readouterr().out
    assert "pending  cat/photos/clean/both" in out and "advdm_plus" not in out
    assert "3 cells" in out and not (tmp_path / "run").exists()  # 2 and the base model's; planning writes nothing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protections", "5"], "Parser key \"protections\":\n  Expected a <class 'list'>"),
        (["--subject_size", "big"], 'Parser key "subject_size"'),
        (["--stage_process", "threads"], "stage_process"),
        (["--defenses", "[cat:middle]"], "unknown CAT variant 'middle'; allowed: ['both', 'encoder', 'decoder']"),
        (["--protections", "[advdm]"], "unknown protection 'advdm'; allowed: ['clean', 'none', 'advdm_minus'"),
    ],
)
def test_bad_arguments_exit_with_the_entry_and_the_allowed_values(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", "--config", DEMO, "--run_dir", str(tmp_path / "run"), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
