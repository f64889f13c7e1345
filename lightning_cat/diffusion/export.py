"""A customized model on disk: diffusers weights plus ``customization.json`` beside them.

Two layouts, both self-contained:

* LoRA: ``pytorch_lora_weights.safetensors`` (load with
  ``StableDiffusionPipeline.from_pretrained(base).load_lora_weights(folder)``);
* full fine-tune: a pipeline folder (load with ``StableDiffusionPipeline.from_pretrained(folder)``);
  its ``vae`` is the base checkpoint's VAE.

When training used a CAT adapter, its peft folder is copied to ``cat_adapter/`` so sampling can
apply the adapted decoder. ``customization.json`` records the base model, the fine-tuning mode,
the LoRA settings, the CAT adapter and the CDL settings, so sampling reproduces the training
setup. The folder is assembled beside its final place and renamed into it at the end: a folder
that exists is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_cat.images import atomic_write_json, staging_dir

if TYPE_CHECKING:
    import torch

    from lightning_cat.diffusion.loading import DiffusionComponents

__all__ = [
    "CAT_ADAPTER_FOLDER",
    "CUSTOMIZATION_FILE",
    "check_output_dir",
    "export_full_model",
    "export_lora_model",
    "read_customization",
    "staged_directory",
]

CUSTOMIZATION_FILE = "customization.json"
CAT_ADAPTER_FOLDER = "cat_adapter"
_FORMAT = 1


def check_output_dir(directory: str | os.PathLike, overwrite: bool = False, *, owner: str = "output_dir") -> Path:
    """Refuse an existing, non-empty ``directory`` unless ``overwrite`` (call before training).

    Raises:
        FileExistsError: naming the folder.
    """
    target = Path(directory).expanduser()
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{owner} '{target}' is a file")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{owner} '{target}' already exists and is not empty; choose another folder or overwrite")
    return target


@contextmanager
def staged_directory(directory: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``directory``; on success it replaces ``directory``.

    On error the staging folder is removed and ``directory`` is left as it was.
    """
    target = check_output_dir(directory, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(target)
    try:
        yield staging
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.rename(target, old / target.name)
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _finish(staging: Path, record: dict[str, Any], cat_adapter: str | os.PathLike | None) -> None:
    from lightning_cat import __version__

    record = dict(record)
    if cat_adapter is not None:
        shutil.copytree(cat_adapter, staging / CAT_ADAPTER_FOLDER)
        record["cat_adapter"] = CAT_ADAPTER_FOLDER
        record["cat_adapter_source"] = str(Path(cat_adapter).resolve())
    else:
        record["cat_adapter"] = None
        record["cat_adapter_source"] = None
    record["format"] = _FORMAT
    record["lightning_cat_version"] = __version__
    atomic_write_json(staging / CUSTOMIZATION_FILE, record)


def export_lora_model(
    directory: str | os.PathLike,
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module | None,
    record: dict[str, Any],
    *,
    cat_adapter: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write LoRA weights (diffusers format), the CAT adapter and ``customization.json``.

    Args:
        directory: the folder to create.
        unet: UNet carrying the LoRA adapter.
        text_encoder: text encoder, exported when it carries an adapter.
        record: settings to record (base model, LoRA, CDL, ...); ``finetune`` is set to ``lora``.
        cat_adapter: CAT adapter folder used in training (copied), or ``None``.
        overwrite: replace an existing non-empty folder.
    """
    from lightning_cat.diffusion.lora import save_lora_weights

    with staged_directory(directory, overwrite) as staging:
        save_lora_weights(staging, unet, text_encoder)
        _finish(staging, {**record, "finetune": "lora"}, cat_adapter)
    return Path(directory)


def export_full_model(
    directory: str | os.PathLike,
    components: DiffusionComponents,
    record: dict[str, Any],
    *,
    cat_adapter: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a full diffusers pipeline folder, the CAT adapter and ``customization.json``.

    ``components`` holds the (fine-tuned) UNet, text encoder, tokenizer and the base VAE; its
    ``source`` supplies the inference scheduler. Weights are saved as safetensors.
    """
    from lightning_cat.diffusion.loading import build_pipeline

    with staged_directory(directory, overwrite) as staging:
        build_pipeline(components).save_pretrained(staging, safe_serialization=True)
        _finish(staging, {**record, "finetune": "full"}, cat_adapter)
    return Path(directory)


def read_customization(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's ``customization.json`` (``None`` when there is none, e.g. a base model).

    Raises:
        ValueError: if the file is not valid JSON or was written by a newer format.
    """
    path = Path(directory) / CUSTOMIZATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"'{path}' is not valid JSON: {error}") from error
    if record.get("format", 0) > _FORMAT:
        raise ValueError(f"'{path}' has format {record.get('format')}; this lightning-cat reads format <= {_FORMAT}")
    return record
