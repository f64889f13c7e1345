"""Write sampled images: one folder per prompt, a grid image and ``samples.json``.

Usage (``lightning-cat predict``)::

    trainer:
      callbacks:
        - class_path: SampleWriter
          init_args: {output_dir: outputs/samples}

Layout of ``output_dir``::

    a_photo_of_sks_person/0000-seed0.png, 0001-seed1.png, ...
    a_dslr_portrait_of_sks_person/...
    grid.png       one row per prompt (first ``grid_columns`` images)
    samples.json   prompts, folders, files and seeds, and the sampling settings (written last)

Each process writes the images of its own batches; at the end the records of all processes
are gathered and rank 0 writes the grid and ``samples.json``, so a 2-process run writes the same
set as a 1-process run.
"""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from lightning_cat.atomic import atomic_write_json, check_writable
from lightning_cat.images import load_image, save_png

__all__ = ["SAMPLES_FILE", "SampleWriter"]

SAMPLES_FILE = "samples.json"
GRID_FILE = "grid.png"


def _gather(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return records
    gathered: list[list[dict[str, Any]] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, records)
    return [record for part in gathered for record in (part or [])]


class SampleWriter(BasePredictionWriter):
    """Saves the images ``SamplingModule.predict_step`` returns, per prompt folder.

    Args:
        output_dir: folder of the sample set.
        grid: also write ``grid.png``.
        grid_columns: images per prompt row in the grid.
        overwrite: delete an existing non-empty ``output_dir`` first (otherwise it is an error).
    """

    def __init__(
        self, output_dir: str = "outputs/samples", grid: bool = True, grid_columns: int = 8, overwrite: bool = False
    ) -> None:
        super().__init__(write_interval="batch")
        if grid_columns < 1:
            raise ValueError(f"SampleWriter: grid_columns must be >= 1, got {grid_columns}")
        # Built with the config, before any model loads: an unwritable folder fails here.
        self.output_dir = check_writable(output_dir, owner="SampleWriter: output_dir")
        self.grid = grid
        self.grid_columns = grid_columns
        self.overwrite = overwrite
        self._records: list[dict[str, Any]] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = self.output_dir
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(f"SampleWriter: output_dir '{folder}' is a file")
        if folder.is_dir() and any(folder.iterdir()):
            if not self.overwrite:
                raise FileExistsError(
                    f"SampleWriter: output_dir '{folder}' already exists and is not empty; "
                    "choose another folder or set overwrite=True"
                )
            if trainer.is_global_zero:
                shutil.rmtree(folder)
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
        trainer.strategy.barrier("sample_writer_start")
        self._records = []

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        images = prediction["images"]
        for row, image in enumerate(images):
            folder, name = prediction["folder"][row], prediction["file"][row]
            path = self.output_dir / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            save_png(Image.fromarray(image.permute(1, 2, 0).cpu().numpy()), path)
            record = {"folder": folder, "file": name, "seed": int(prediction["seed"][row])}
            for key in ("prompt", "sampling_prompt", "prompt_index", "image_index"):
                if key in prediction:
                    record[key] = prediction[key][row]
            record["negative_prompt"] = prediction.get("negative_prompt")
            self._records.append(record)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        records = _gather(self._records)
        if trainer.is_global_zero:
            unique = {(r["folder"], r["file"]): r for r in records}  # samplers may repeat items to even out ranks
            ordered = sorted(
                unique.values(), key=lambda r: (r.get("prompt_index", 0), r.get("image_index", 0), r["file"])
            )
            if self.grid and ordered:
                self._write_grid(ordered)
            self._write_index(ordered, pl_module)
        trainer.strategy.barrier("sample_writer_end")

    def _write_grid(self, records: list[dict[str, Any]]) -> None:
        from torchvision.utils import make_grid

        rows: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            rows.setdefault(record["folder"], []).append(record)
        columns = min(self.grid_columns, max(len(row) for row in rows.values()))
        tiles = []
        for row in rows.values():
            row_tiles = [
                torch.from_numpy(np.array(load_image(self.output_dir / r["folder"] / r["file"]))).permute(2, 0, 1)
                for r in row[:columns]
            ]
            tiles += row_tiles + [torch.full_like(row_tiles[0], 255)] * (columns - len(row_tiles))
        grid = make_grid(torch.stack(tiles), nrow=columns, padding=2, pad_value=255)
        save_png(Image.fromarray(grid.permute(1, 2, 0).numpy()), self.output_dir / GRID_FILE)

    def _write_index(self, records: list[dict[str, Any]], pl_module: LightningModule) -> None:
        prompts: dict[str, dict[str, Any]] = {}
        for record in records:
            entry = prompts.setdefault(
                record["folder"],
                {
                    "prompt": record.get("prompt"),
                    "sampling_prompt": record.get("sampling_prompt"),
                    "negative_prompt": record.get("negative_prompt"),
                    "folder": record["folder"],
                    "files": [],
                },
            )
            entry["files"].append({"file": record["file"], "seed": record["seed"]})
        settings = pl_module.sampling_settings() if hasattr(pl_module, "sampling_settings") else {}
        from lightning_cat import __version__

        atomic_write_json(
            self.output_dir / SAMPLES_FILE,
            {
                "settings": settings,
                "prompts": list(prompts.values()),
                "num_images": len(records),
                "lightning_cat_version": __version__,
            },
        )
