"""The protocol on the trained ``testbed`` model: protections x defenses x LoRA, and the base model.

    python benchmarks/testbed_study.py                       # the whole grid of configs/experiment/testbed.yaml
    python benchmarks/testbed_study.py --protections clean advdm_plus --defenses none cat:both --eps 16

Runs (or resumes) the experiment with the chosen part of the grid and the BASE model's own samples
(the experiment's ``base_model: true``: the sample stage's prompts and seeds on the model itself,
the reference every customization must beat on the subject metric), and writes ``benchmarks/results/testbed_study.json`` plus a Markdown table
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
from lightning_cat.experiment.config import BASE_MODEL  # noqa: E402  (after the path insert)

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


#: The subject metric on the first prompt alone ("a photo of sks person"): the second prompt's base
#: samples are flat, which nearest-subject SSIM rewards (benchmarks/README.md).
FIRST_PROMPT = "subject_ssim"


def summarize(rows: list[dict]) -> list[dict]:
    """Mean of each column over prompts, and ``FIRST_PROMPT`` on the first prompt alone (column
    ``<name>@prompt1``), per (protection, defense, customization); the base model's rows first."""
    groups: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in sorted(rows, key=lambda r: r["customization"] != BASE_MODEL):
        values = groups[(row["protection"], row["defense"], row["customization"])]
        if not values:
            values[f"{FIRST_PROMPT}@prompt1"].append(float(row[FIRST_PROMPT]))
        for column in COLUMNS:
            value = row.get(column)
            if isinstance(value, (int, float)) and math.isfinite(value):
                values[column].append(float(value))
    return [
        {"protection": p, "defense": d, "customization": c, **{k: sum(v) / len(v) for k, v in values.items()}}
        for (p, d, c), values in groups.items()
    ]


def markdown(table: list[dict]) -> str:
    def cell(value):
        return "" if value is None else f"{value:.3f}"

    columns = (f"{FIRST_PROMPT}@prompt1", *COLUMNS)
    lines = ["| protection | defense | " + " | ".join(columns) + " |", "|---|---|" + "---:|" * len(columns)]
    for row in table:
        label = ("(base model, no customization)", "") if row["customization"] == BASE_MODEL else None
        protection, defense = label or (row["protection"], row["defense"])
        lines.append(f"| {protection} | {defense} | " + " | ".join(cell(row.get(c)) for c in columns) + " |")
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
    table = summarize(rows)
    record = {
        "experiment": str(EXPERIMENT.relative_to(REPO)),
        "protections": config.protections,
        "defenses": [d.name for d in config.defenses],
        "sweep": overrides.get("sweep", "as configured"),
        "cells": table,
        "this_run_seconds": round(grid_seconds),  # finished stages of the run directory are reused
        # every stage's own time, as its .stage.json records it (the work, whichever run did it)
        "stage_seconds": round(sum(json.loads(f.read_text())["seconds"] for f in args.run_dir.rglob(".stage.json"))),
        "torch_threads": torch.get_num_threads(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "testbed_study.json").write_text(json.dumps(record, indent=1) + "\n")
    (args.out / "testbed_study.md").write_text(markdown(table))
    grids = sorted((args.run_dir / "grids").glob("*.png"))
    if grids:
        shutil.copyfile(grids[0], args.out / "testbed_grid.png")
    print(markdown(table))
    print(f"this run: {grid_seconds / 60:.1f} min; written to {args.out}")


if __name__ == "__main__":
    main()
