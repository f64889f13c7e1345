"""Fit a CAT adapter and test it with the latent-distortion callback on 1 or N CPU processes.

Run as a script (``python tests/ddp_cat_run.py --devices 2 ...``) for DDP: Lightning's ``ddp``
strategy re-executes this file for the other ranks. ``tests/test_cat_ddp.py`` compares the result
with the same run on one process. Global batch 2: one image per process under 2 processes.
Training runs in float64 (``64-true``): in float32 the order in which the batch's gradients are
summed (one process sums two images, two processes all-reduce one each) already moves the adapter
weights by ~1e-6 on a single process, so only float64 can show the runs agree to 1e-10.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def run(
    devices: int, clean: str, protected: str, adapter: str, out: str | None = None, precision: str = "64-true"
) -> dict[str, float]:
    """Train 2 steps, export to ``adapter``, test with the callback; returns the logged metrics."""
    from lightning.pytorch import Trainer, seed_everything

    from lightning_cat.callbacks import LatentDistortionCallback
    from lightning_cat.datamodules import ImageFolderDataModule, PairedImageDataModule
    from lightning_cat.modules import CATAdapterModule

    seed_everything(0)
    options = {
        "accelerator": "cpu",
        "devices": devices,
        "strategy": "ddp" if devices > 1 else "auto",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    module = CATAdapterModule(lora_rank=4, learning_rate=1e-3, output_dir=adapter)
    data = ImageFolderDataModule(protected, resolution=64, batch_size=2 // devices, shuffle=False)
    trainer = Trainer(max_steps=2, precision=precision, **options)
    trainer.fit(module, data)
    pairs = PairedImageDataModule(clean, protected, resolution=64, batch_size=2 // devices)
    tester = Trainer(callbacks=[LatentDistortionCallback(cat_adapter=adapter)], precision=precision, **options)
    tester.test(module, pairs)
    metrics = {key: float(value) for key, value in tester.callback_metrics.items()}
    if out is not None and tester.is_global_zero:
        Path(out).write_text(json.dumps(metrics, indent=1))
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--clean", required=True)
    parser.add_argument("--protected", required=True)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--precision", default="64-true")
    args = parser.parse_args()
    run(args.devices, args.clean, args.protected, args.adapter, args.out, args.precision)
