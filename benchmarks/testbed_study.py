"""The protocol on the trained ``testbed`` model: protections x defenses x LoRA, and the base model.

    python benchmarks/testbed_study.py                       # the whole grid of configs/experiment/testbed.yaml
    python benchmarks/testbed_study.py --protections clean advdm_plus --defenses none cat:both --eps 16

Runs (or resumes) the experiment with the chosen part of the grid, then samples the BASE model
with the sample stage's prompts and seeds (the reference every customization must beat on the
subject metric), and writes ``benchmarks/results/testbed_study.json`` plus a Markdown table
(``testbed_study.md``) and the experiment's image grid (``testbed_grid.png``) beside it. Every value is a
mean over the two prompts' samples. Nothing is tuned on the results: the configs were fixed first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
EXPERIMENT = REPO / "configs" / "experiment" / "testbed.yaml"
OUT = REPO / "benchmarks" / "results"
COLUMNS = (
    "subject_ssim",
    "subject_psnr",
    "pixel_correlation",
    "brisque",
    "psnr",
    "ssim",
    "base/latent_mse_relative",
    "cat/latent_mse_relative",
)


def base_model_reference(config, subject_folder: Path) -> dict[str, float]:
    """The sample stage's prompts and seeds on the base model, scored like every cell."""
    import torch
    import yaml

    from lightning_cat.diffusion import build_pipeline, load_components
    from lightning_cat.images import ImageTransform
    from lightning_cat.metrics import BRISQUE, NearestSubjectSimilarity, PixelCorrelation
    from lightning_cat.sampling.generation import generate_images

    sample = yaml.safe_load(Path(config.stage_file("sample", "")).read_text())
    model_args, data_args = sample["model"]["init_args"], sample["data"]["init_args"]
    prompts = [
        p.format(instance_token=data_args["instance_token"], **{"class": data_args["class_name"]})
        for p in data_args["prompts"]
    ]
    metrics = {
        "subject_ssim": NearestSubjectSimilarity("ssim"),
        "subject_psnr": NearestSubjectSimilarity("psnr"),
        "pixel_correlation": PixelCorrelation(),
        "brisque": BRISQUE(),
    }
    transform = ImageTransform(resolution=64, crop="center", small_images="upscale")
    for name in ("subject_ssim", "subject_psnr"):
        metrics[name].set_reference_folder(subject_folder, transform)
    pipeline = build_pipeline(load_components(config.model))
    torch.manual_seed(config.seed)
    count = data_args["images_per_prompt"]
    for prompt in prompts:
        images = generate_images(
            pipeline,
            [prompt] * count,
            [data_args["seed"] + i for i in range(count)],
            num_inference_steps=model_args["num_inference_steps"],
            guidance_scale=model_args["guidance_scale"],
        )
        for metric in metrics.values():
            metric.update(images)
    return {name: float(metric.compute()) for name, metric in metrics.items()}


def summarize(rows: list[dict]) -> list[dict]:
    """Mean of each column over prompts, per (protection, defense)."""
    groups: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for column in COLUMNS:
            value = row.get(column)
            if isinstance(value, (int, float)) and math.isfinite(value):
                groups[(row["protection"], row["defense"])][column].append(float(value))
    return [
        {"protection": p, "defense": d, **{c: sum(v) / len(v) for c, v in values.items()}}
        for (p, d), values in groups.items()
    ]


def markdown(table: list[dict], base: dict[str, float]) -> str:
    def cell(value):
        return "" if value is None else f"{value:.3f}"

    lines = [
        "| protection | defense | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
        "| (base model, no customization) | | " + " | ".join(cell(base.get(c)) for c in COLUMNS) + " |",
    ]
    for row in table:
        lines.append(
            f"| {row['protection']} | {row['defense']} | " + " | ".join(cell(row.get(c)) for c in COLUMNS) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "testbed")
    parser.add_argument("--protections", nargs="+", help="default: the experiment's (clean, advdm_plus, ...)")
    parser.add_argument("--defenses", nargs="+", help="default: the experiment's")
    parser.add_argument("--eps", nargs="+", type=float, help="eps_255 sweep (default: the experiment's 8 16)")
    parser.add_argument("--model", help="another diffusers folder of the same shape (default: testbed)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from lightning_cat.experiment import ExperimentRunner, load_experiment_config

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    overrides = {"run_dir": str(args.run_dir)}
    if args.protections:
        overrides["protections"] = args.protections
    if args.defenses:
        overrides["defenses"] = args.defenses
    if args.eps:
        overrides["sweep"] = {"eps_255": args.eps}
    if args.model:
        overrides["model"] = args.model
    config = load_experiment_config(EXPERIMENT, overrides)  # every name is checked before anything runs
    start = time.time()
    runner = ExperimentRunner(config)
    runner.run()
    grid_seconds = time.time() - start
    rows = json.loads((args.run_dir / "results.json").read_text())
    subject_folder = next(c.clean.outputs["images"] for c in runner.experiment_plan.cells)
    base = base_model_reference(config, subject_folder)
    table = summarize(rows)
    record = {
        "experiment": str(EXPERIMENT.relative_to(REPO)),
        "protections": config.protections,
        "defenses": [d.name for d in config.defenses],
        "sweep": overrides.get("sweep", "as configured"),
        "base_model": base,
        "cells": table,
        "grid_seconds": round(grid_seconds),
        "torch_threads": torch.get_num_threads(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "testbed_study.json").write_text(json.dumps(record, indent=1) + "\n")
    (args.out / "testbed_study.md").write_text(markdown(table, base))
    grids = sorted((args.run_dir / "grids").glob("*.png"))
    if grids:
        shutil.copyfile(grids[0], args.out / "testbed_grid.png")
    print(markdown(table, base))
    print(f"grid: {grid_seconds / 60:.1f} min; written to {args.out}")


if __name__ == "__main__":
    main()
