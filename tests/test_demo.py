"""README's first command: the demo experiment runs to a finished report (the same config)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from lightning_cat.experiment import ExperimentRunner, load_experiment_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_experiment_runs_to_a_report(tmp_path):
    config = load_experiment_config(ROOT / "configs/experiment/demo.yaml", {"run_dir": str(tmp_path / "demo")})
    report = ExperimentRunner(config).run()
    run_dir = tmp_path / "demo"
    with open(run_dir / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["customization"] for r in rows} == {"lora", "base"}  # and the base model's own samples
    cells = {(r["protection"], r["defense"]) for r in rows}
    assert cells == {("clean", "none"), ("advdm_plus", "none"), ("advdm_plus", "purify:tv+cdl")}
    for row in rows:
        for metric in ("subject_ssim", "subject_psnr", "pixel_correlation", "brisque"):
            assert math.isfinite(float(row[metric])), (metric, row)
        protected = row["protection"] != "clean"
        for metric in ("psnr", "ssim", "base/latent_mse_relative"):
            # protected-vs-clean columns exist exactly where there is a protected set
            assert (row[metric] != "") == protected, (metric, row)
            assert not protected or math.isfinite(float(row[metric]))
    html = report.read_text()
    assert "advdm_plus" in html and "<img" in html
    assert (run_dir / "grids/photos-lora.png").is_file() and list((run_dir / "plots").glob("*.png"))
