"""The experiment runner end to end: results table, resume after a kill, reruns only what changed,
bad configs rejected before any stage runs."""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lightning_cat.experiment import ExperimentConfigError, ExperimentRunner, load_experiment_config
from lightning_cat.experiment.store import MARKER

ROOT = Path(__file__).resolve().parents[1]


def _derive(source: str, target: Path, edit) -> str:
    """A fast copy of one of the real tiny stage configs (only step counts change)."""
    config = yaml.safe_load((ROOT / source).read_text())
    edit(config)
    target.write_text(yaml.safe_dump(config))
    return str(target)


def _fast_stage_configs(folder: Path, sample_steps: int = 2) -> dict:
    folder.mkdir(exist_ok=True)

    def protect(c):
        c["model"]["init_args"]["steps"] = 2

    def lora(c):
        c["trainer"]["max_steps"] = 2
        c["model"]["init_args"]["class_generation_steps"] = 2
        c["data"]["init_args"]["num_class_images"] = 2

    def cat(c):
        c["trainer"]["max_steps"] = 2

    def sample(c):
        c["model"]["init_args"]["num_inference_steps"] = sample_steps
        c["data"]["init_args"]["prompts"] = c["data"]["init_args"]["prompts"][:1]
        c["data"]["init_args"]["images_per_prompt"] = 2

    return {
        "protect": {"advdm_plus": _derive("configs/protect/advdm_plus.tiny.yaml", folder / "protect.yaml", protect)},
        "purify": {"jpeg": str(ROOT / "configs/purify/jpeg.tiny.yaml")},
        "cat": {"both": _derive("configs/cat/both.tiny.yaml", folder / "cat.yaml", cat)},
        "customize": {"lora": _derive("configs/dreambooth/lora.tiny.yaml", folder / "lora.yaml", lora)},
        "sample": _derive("configs/dreambooth/sample.tiny.yaml", folder / "sample.yaml", sample),
        "evaluate": str(ROOT / "configs/eval/metrics.tiny.yaml"),
    }


@pytest.fixture
def experiment_file(tmp_path, photos_dir):
    subject = tmp_path / "subject"
    subject.mkdir()
    for name in ("astronaut", "coffee"):
        shutil.copyfile(photos_dir / f"{name}.png", subject / f"{name}.png")
    experiment = {
        "run_dir": str(tmp_path / "run"),
        "model": "tiny",
        "subjects": {"photos": [str(subject)]},
        "protections": ["advdm_plus"],
        "defenses": ["none", "cat:both", "cdl", "purify:jpeg+cdl"],
        "customizations": ["lora"],
        "stages": _fast_stage_configs(tmp_path / "stages"),
        "trainer": {"accelerator": "cpu", "devices": 1},
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return path


def _markers(run_dir: Path) -> dict[str, float]:
    return {str(p.parent.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob(MARKER)}


def test_grid_survives_a_kill_and_reruns_only_what_changed(experiment_file, tmp_path):
    run_dir = tmp_path / "run"
    killed_stage = run_dir / "customize/photos/advdm_plus/none/lora.partial"
    process = subprocess.Popen(
        [sys.executable, "-m", "lightning_cat", "experiment", "--config", str(experiment_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not killed_stage.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert killed_stage.exists(), "the runner did not reach the customization stage"
    finished_before = _markers(run_dir)
    assert {"subjects/photos", "protect/photos/advdm_plus", "class_images/lora"} <= set(finished_before)
    assert "customize/photos/advdm_plus/none/lora" not in finished_before

    runner = ExperimentRunner(load_experiment_config(experiment_file))
    report = runner.run()
    assert not set(runner.executed) & set(finished_before)  # nothing finished was redone
    assert all(_markers(run_dir)[key] == mtime for key, mtime in finished_before.items())
    assert not list(run_dir.rglob("*.partial")) and not list(run_dir.rglob("*.stale"))

    rows = yaml.safe_load((run_dir / "results.json").read_text())
    assert {(r["protection"], r["defense"], r["customization"], r["prompt"]) for r in rows} == {
        (protection, defense, "lora", "a photo of sks person")
        for protection in ("advdm_plus",)
        for defense in ("none", "cat:both", "cdl", "purify:jpeg+cdl")
    }
    for row in rows:
        for metric in ("fid", "psnr", "ssim", "lpips", "clip_iqa", "brisque", "linf_255"):
            assert isinstance(row[metric], float) and math.isfinite(row[metric]), (metric, row)
        assert 0 < row["linf_255"] <= row["eps_255"]
        # the latent distortion of the images the customization trained on, base VAE (and CAT VAE)
        assert row["base/latent_mse_relative"] > 0 and math.isfinite(row["base/recon_psnr"])
        assert ("cat/latent_mse_relative" in row) == (row["defense"] == "cat:both")
    cat_row = next(r for r in rows if r["defense"] == "cat:both")
    assert (run_dir / "cat/photos/advdm_plus/both/adapter/adapter_config.json").is_file()
    assert cat_row["cat/latent_mse_relative"] != cat_row["base/latent_mse_relative"]
    assert report.is_file() and "advdm_plus" in report.read_text()
    assert (run_dir / "grids/photos-lora.png").is_file() and (run_dir / "report.md").is_file()

    # A changed sampling option reruns sampling and evaluation, nothing upstream.
    config = yaml.safe_load(experiment_file.read_text())
    config["stages"] = _fast_stage_configs(tmp_path / "stages", sample_steps=3)
    experiment_file.write_text(yaml.safe_dump(config))
    again = ExperimentRunner(load_experiment_config(experiment_file))
    again.run()
    assert sorted(again.executed) == sorted(
        f"{stage}/photos/advdm_plus/{defense}/lora"
        for stage in ("sample", "evaluate")
        for defense in ("none", "cat-both", "cdl", "purify-jpeg+cdl")
    )


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda c: c.update(protections=["advdm"]),
            r"unknown protection 'advdm'; allowed: \['clean', 'none', 'advdm_minus'",
        ),
        (
            lambda c: c.update(defenses=["cat:middle"]),
            r"unknown CAT variant 'middle'; allowed: \['both', 'encoder', 'decoder'\]",
        ),
        (lambda c: c["stages"].pop("cat") and c.update(defenses=["cat:both"]), r"stages.cat must be a mapping"),
        (
            lambda c: c["stages"].update(cat={"encoder": "x.yaml"}) or c.update(defenses=["cat:both"]),
            r"stages.cat has no config for 'both'; configured: \['encoder'\]",
        ),
        (lambda c: c.update(defenses=["purify:median"]), r"unknown purifier 'median'; allowed: \["),
        (lambda c: c.update(defenses=["cdl+cdl"]), r"cannot read 'cdl'"),
        (lambda c: c["stages"].update(sample="missing.yaml"), r"stages.sample: 'missing.yaml' does not exist"),
        (lambda c: c.update(customizations=["full"]), r"stages.customize has no config for 'full'"),
        (
            lambda c: c.update(budget=8),
            r"experiment --config .*yaml: Option 'budget' is not accepted; allowed: \['run_dir'",
        ),
        (lambda c: c.update(protections="advdm_plus"), r'Parser key "protections":\n  Expected a <class .list.>'),
        (lambda c: c.update(seed="zero"), r'Parser key "seed":\n  Expected a <class .int.>'),
        (lambda c: c["stages"].update(sampling="x.yaml"), r"Group 'stages' does not accept option 'sampling'"),
    ],
)
def test_bad_configs_are_rejected_before_any_stage(experiment_file, tmp_path, edit, match):
    config = yaml.safe_load(experiment_file.read_text())
    edit(config)
    experiment_file.write_text(yaml.safe_dump(config))
    with pytest.raises(ExperimentConfigError, match=match):
        load_experiment_config(experiment_file)
    assert not (tmp_path / "run").exists()


def test_protection_config_must_match_its_name(experiment_file, tmp_path):
    config = yaml.safe_load(experiment_file.read_text())
    config["stages"]["protect"]["advdm_plus"] = str(ROOT / "configs/protect/photoguard.tiny.yaml")
    experiment_file.write_text(yaml.safe_dump(config))
    with pytest.raises(ExperimentConfigError, match="sets method 'photoguard'"):
        load_experiment_config(experiment_file)


def test_plan_lists_shared_stages_once(experiment_file):
    runner = ExperimentRunner(load_experiment_config(experiment_file))
    keys = ["/".join(stage.key) for stage in runner.plan()]
    assert keys.count("protect/photos/advdm_plus") == 1 and keys.count("class_images/lora") == 1
    assert len([k for k in keys if k.startswith("customize/")]) == 4
    assert keys.count("cat/photos/advdm_plus/both") == 1  # customize and evaluate share it
    assert keys.index("purify/photos/advdm_plus/jpeg") < keys.index("customize/photos/advdm_plus/purify-jpeg+cdl/lora")
    assert keys.index("protect/photos/advdm_plus") < keys.index("customize/photos/advdm_plus/none/lora")


@pytest.mark.parametrize("name", ["demo", "liu_sd21", "cat_sd21"])
def test_shipped_experiments_are_valid_and_plan(name, photos_dir):
    """Every shipped experiment validates against the registries and plans (subjects replaced by a
    local folder, since the paper configs name the user's own data)."""
    overrides = None if name == "demo" else {"subjects": {"subject_a": str(photos_dir)}}
    config = load_experiment_config(ROOT / "configs/experiment" / f"{name}.yaml", overrides)
    stages = ExperimentRunner(config).plan()
    kept = [(p, d) for p in config.protection_cells for d in config.defenses if not config.skips(p, d)]
    cells = len(kept) * len(config.customizations) * len(config.subjects)
    cells += len(config.subjects) if config.base_model else 0
    assert len([s for s in stages if s.key[0] == "evaluate"]) == cells


def test_overrides_replace_the_files_entries_verbatim(tmp_path, photos_dir):
    run_dir = tmp_path / "elsewhere" / "run"
    overrides = {"run_dir": str(run_dir), "subjects": {"subject_a": photos_dir}, "seed": 3}
    config = load_experiment_config(ROOT / "configs/experiment/liu_sd21.yaml", overrides)
    assert Path(config.run_dir) == run_dir and config.seed == 3
    assert config.subjects["subject_a"] == [str(photos_dir)]


def test_every_model_based_purifier_composes_with_cdl(experiment_file, tmp_path):
    """purify:<name>+cdl for each model-based purifier: the purified set is what CDL trains on."""

    def few_steps(c):
        init = c["model"]["init_args"]["purifier"]["init_args"]
        for key, value in {"num_inference_steps": 2, "iterations": 2}.items():
            if key in init:
                init[key] = value

    names = ["noisy_upscale", "latent_diffpure", "latent_gridpure", "impress"]
    config = yaml.safe_load(experiment_file.read_text())
    config["stages"]["purify"] = {
        name: _derive(f"configs/purify/{name}.tiny.yaml", tmp_path / "stages" / f"{name}.yaml", few_steps)
        for name in names
    }
    config["defenses"] = [f"purify:{name}+cdl" for name in names]
    experiment_file.write_text(yaml.safe_dump(config))
    runner = ExperimentRunner(load_experiment_config(experiment_file))
    runner.run()
    rows = yaml.safe_load((tmp_path / "run" / "results.json").read_text())
    assert {r["defense"] for r in rows} == set(config["defenses"])
    for name in names:
        manifest = yaml.safe_load((tmp_path / f"run/purify/photos/advdm_plus/{name}/images/manifest.json").read_text())
        assert manifest["purifier"]["name"] == name, manifest["purifier"]
        record = yaml.safe_load(
            (tmp_path / f"run/customize/photos/advdm_plus/purify-{name}+cdl/lora/model/customization.json").read_text()
        )
        assert record["cdl"]["instance_suffix"], record
    for row in rows:
        assert (
            math.isfinite(row["fid"]) and math.isfinite(row["psnr"]) and math.isfinite(row["base/latent_mse_relative"])
        )


def test_a_budget_sweep_multiplies_the_protection_cells(experiment_file, tmp_path, photos_dir):
    """sweep: {eps_255: [2, 4]} runs each protection at both budgets (FSMG with the subject's separate
    clean set as its surrogate's training set), and the report plots the metrics against the budget."""

    def fsmg(c):
        c["model"]["init_args"].update(steps=1, surrogate_pretrain_steps=1)

    config = yaml.safe_load(experiment_file.read_text())
    set_a = tmp_path / "set_a"
    set_a.mkdir()
    shutil.copyfile(photos_dir / "rocket.png", set_a / "rocket.png")
    config["subjects"] = {"photos": {"images": config["subjects"]["photos"], "surrogate_clean": str(set_a)}}
    config["protections"] = ["clean", "advdm_plus", "fsmg"]
    config["stages"]["protect"]["fsmg"] = _derive(
        "configs/protect/fsmg.tiny.yaml", tmp_path / "stages" / "fsmg.yaml", fsmg
    )
    config["defenses"] = ["none"]
    config["sweep"] = {"eps_255": [2, 4]}
    experiment_file.write_text(yaml.safe_dump(config))
    runner = ExperimentRunner(load_experiment_config(experiment_file))
    keys = ["/".join(stage.key) for stage in runner.plan()]
    assert {k for k in keys if k.startswith("protect/")} == {
        f"protect/photos/{method}-eps_255-{eps}" for method in ("advdm_plus", "fsmg") for eps in (2, 4)
    }
    runner.run()
    rows = yaml.safe_load((tmp_path / "run" / "results.json").read_text())
    cells = {(r["protection"], r["method"], r["eps_255"]) for r in rows}
    assert cells == {("clean", "clean", 0.0)} | {
        (f"{m}@eps_255={e}", m, float(e)) for m in ("advdm_plus", "fsmg") for e in (2, 4)
    }
    assert all(r["linf_255"] <= r["eps_255"] for r in rows)
    assert (tmp_path / "run" / "plots" / "fid-vs-budget.png").is_file()
    manifest = yaml.safe_load((tmp_path / "run/protect/photos/fsmg-eps_255-2/images/manifest.json").read_text())
    assert manifest["params"]["surrogate_clean_root"].endswith("subjects/photos/surrogate_clean")
    assert sorted(p.name for p in (tmp_path / "run/subjects/photos/surrogate_clean").iterdir()) == ["rocket.png"]


def test_a_budget_names_the_same_stages_however_it_is_written(experiment_file):
    config = yaml.safe_load(experiment_file.read_text())
    keys = {}
    for spelling in ([8, 4.5], [8.0, 4.5]):
        config["sweep"] = {"eps_255": spelling}
        experiment_file.write_text(yaml.safe_dump(config))
        keys[str(spelling)] = {
            (s.key, s.fingerprint) for s in ExperimentRunner(load_experiment_config(experiment_file)).plan()
        }
    assert keys["[8, 4.5]"] == keys["[8.0, 4.5]"]


def test_a_sweep_value_a_method_does_not_accept_is_rejected_before_any_stage(experiment_file, tmp_path):
    config = yaml.safe_load(experiment_file.read_text())
    config["sweep"] = {"eps_255": [8, 300]}
    experiment_file.write_text(yaml.safe_dump(config))
    with pytest.raises(ExperimentConfigError, match=r"sweep.eps_255=300 for 'advdm_plus'.*eps_255 must be"):
        load_experiment_config(experiment_file)
    config["sweep"] = {"iterations": [1]}
    experiment_file.write_text(yaml.safe_dump(config))
    with pytest.raises(ExperimentConfigError, match="does not take option"):
        load_experiment_config(experiment_file)


@pytest.mark.parametrize("name", ["liu_sd21", "cat_sd21"])
def test_the_paper_grids_plan_without_their_data_or_a_model(name, capsys, monkeypatch):
    from lightning_cat.cli import main

    def no_loading(*args, **kwargs):
        raise AssertionError("planning touched a model")

    monkeypatch.setattr("lightning_cat.diffusion.loading.load_components", no_loading)
    main(
        [
            "experiment",
            "--config",
            str(ROOT / "configs/experiment" / f"{name}.yaml"),
            "--plan",
            "--run_dir",
            "/nonexistent/run",
        ]
    )
    out = capsys.readouterr().out
    assert "pending  evaluate/" in out and "subject folders still missing" in out


def test_skip_leaves_cells_out_and_base_model_adds_the_base_models_row(experiment_file):
    config = yaml.safe_load(experiment_file.read_text())
    config["protections"] = ["clean", "advdm_plus"]
    config["defenses"] = ["none", "cat:both"]
    config["sweep"] = {"eps_255": [4, 8]}
    config["skip"] = ["clean/cat:both", "advdm_plus@eps_255=4/none"]
    experiment_file.write_text(yaml.safe_dump(config))
    keys = {"/".join(s.key) for s in ExperimentRunner(load_experiment_config(experiment_file)).plan()}
    evaluated = {k.removeprefix("evaluate/photos/") for k in keys if k.startswith("evaluate/")}
    assert evaluated == {
        "clean/none/lora",
        "advdm_plus-eps_255-4/cat-both/lora",
        "advdm_plus-eps_255-8/none/lora",
        "advdm_plus-eps_255-8/cat-both/lora",
    }
    assert not any(k.startswith("cat/photos/clean") for k in keys)  # nothing is trained for a skipped cell
    # A run, with the base model's own row beside the cells (base_model: true).
    config["sweep"], config["defenses"], config["skip"] = None, ["none", "cdl"], ["clean/cdl"]
    config["base_model"] = True
    experiment_file.write_text(yaml.safe_dump(config))
    ExperimentRunner(load_experiment_config(experiment_file)).run()
    run_dir = Path(config["run_dir"])
    rows = yaml.safe_load((run_dir / "results.json").read_text())
    assert {(r["protection"], r["defense"], r["customization"]) for r in rows} == {
        ("clean", "none", "lora"),
        ("advdm_plus", "none", "lora"),
        ("advdm_plus", "cdl", "lora"),
        ("clean", "none", "base"),
    }
    base = [r for r in rows if r["customization"] == "base"]
    prompts = {r["prompt"] for r in rows if r["customization"] == "lora"}
    assert {r["prompt"] for r in base} == prompts and len(base) == len(prompts)
    assert all(math.isfinite(r["fid"]) and "psnr" not in r for r in base)  # no protected set to compare
    sampled = yaml.safe_load((run_dir / "sample/photos/clean/none/base/stage_config.yaml").read_text())
    assert sampled["model"]["init_args"]["pretrained_model_name_or_path"] == "tiny"  # the model itself
    assert not (run_dir / "customize/photos/clean/none/base").exists()
    assert sorted(p.name for p in (run_dir / "grids").iterdir()) == ["photos-lora.png"]  # skipped cell blank
    config["base_model"] = False
    config["sweep"], config["defenses"] = {"eps_255": [4, 8]}, ["none", "cat:both"]
    config["skip"] = ["advdm_plus/cat:both"]  # a method covers every sweep point
    experiment_file.write_text(yaml.safe_dump(config))
    keys = {"/".join(s.key) for s in ExperimentRunner(load_experiment_config(experiment_file)).plan()}
    assert not any(k.startswith("evaluate/") and "advdm_plus" in k and "cat-both" in k for k in keys)
    config["skip"] = ["photoguard/none"]
    experiment_file.write_text(yaml.safe_dump(config))
    with pytest.raises(ExperimentConfigError, match=r"skip: 'photoguard/none' is not a cell.*'clean/cat:both'"):
        load_experiment_config(experiment_file)
    config["skip"] = ["clean/none", "clean/cat:both", "advdm_plus/none", "advdm_plus/cat:both"]
    experiment_file.write_text(yaml.safe_dump(config))
    with pytest.raises(ExperimentConfigError, match="skip leaves no cell"):
        load_experiment_config(experiment_file)


def test_base_is_not_a_customization_name(experiment_file):
    config = yaml.safe_load(experiment_file.read_text())
    config["customizations"] = ["base"]
    experiment_file.write_text(yaml.safe_dump(config))
    with pytest.raises(ExperimentConfigError, match="set base_model: true instead"):
        load_experiment_config(experiment_file)
