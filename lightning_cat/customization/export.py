"""A customized model on disk: diffusers weights plus ``customization.json`` beside them, and back.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lightning_cat.atomic import atomic_write_json, check_output_dir, staged_dir
from lightning_cat.diffusion.loading import DiffusionComponents, build_pipeline, load_components, resolve_model_path

if TYPE_CHECKING:
    import torch

__all__ = [
    "CAT_ADAPTER_FOLDER",
    "CUSTOMIZATION_FILE",
    "Finetune",
    "export_full_model",
    "export_lora_model",
    "load_customized_components",
    "read_customization",
]

#: ``full`` fine-tunes the UNet (and the text encoder); ``lora`` trains LoRA adapters on them.
Finetune = Literal["full", "lora"]

_PIPELINE_PARTS = ("tokenizer", "text_encoder", "vae", "unet")

CUSTOMIZATION_FILE = "customization.json"
CAT_ADAPTER_FOLDER = "cat_adapter"
_FORMAT = 1


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
    from lightning_cat.customization.lora import save_lora_weights

    with staged_dir(check_output_dir(directory, overwrite)) as staging:
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
    with staged_dir(check_output_dir(directory, overwrite)) as staging:
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


def load_customized_components(
    pretrained_model_name_or_path: str,
    *,
    revision: str | None = None,
    variant: str | None = None,
) -> tuple[DiffusionComponents, dict[str, Any] | None]:
    """Tokenizer, text encoder, VAE and UNet of a customized model folder, ready to sample.

    A folder written by ``DreamBoothModule`` (with ``customization.json``) is rebuilt as trained:
    LoRA weights are loaded onto the recorded base model and fused; a full fine-tune loads from
    the folder; a recorded CAT adapter is applied to the VAE (merged). Anything else (a base
    model name or folder) loads as is. Returns the components (frozen, eval) and the record
    (``None`` for a base model).
    """
    from lightning_cat.cat.adapter import load_cat_vae

    path = resolve_model_path(pretrained_model_name_or_path)
    record = read_customization(path) if Path(path).is_dir() else None
    if record is None:
        components = load_components(
            pretrained_model_name_or_path, revision=revision, variant=variant, parts=_PIPELINE_PARTS
        )
        vae_source = pretrained_model_name_or_path
    elif record["finetune"] == "full":
        components = load_components(path, parts=_PIPELINE_PARTS)
        vae_source = path
    elif record["finetune"] == "lora":
        base = record["pretrained_model_name_or_path"]
        revision, variant = record.get("revision"), record.get("variant")
        components = load_components(base, revision=revision, variant=variant, parts=_PIPELINE_PARTS)
        pipeline = build_pipeline(components, revision=revision)
        pipeline.load_lora_weights(path)
        pipeline.fuse_lora()
        pipeline.unload_lora_weights()
        vae_source = base
    else:
        raise ValueError(f"'{path}': customization.json has unknown finetune {record['finetune']!r}")
    if record is not None and record.get("cat_adapter"):
        components.vae = load_cat_vae(
            vae_source,
            Path(path) / record.get("cat_adapter", CAT_ADAPTER_FOLDER),
            revision=record.get("revision") if vae_source != path else None,
            variant=record.get("variant") if vae_source != path else None,
        )
    for part in _PIPELINE_PARTS[1:]:
        getattr(components, part).requires_grad_(False).eval()
    return components, record
