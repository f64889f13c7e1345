"""Load Stable Diffusion components from a local diffusers folder, a hub id, ``tiny`` or ``testbed``.

Every module loads its model through :func:`load_components` (or :func:`load_vae` /
:func:`build_pipeline`), so a real checkpoint and the offline tiny model take exactly the same
``from_pretrained`` path. Nothing here trusts remote code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from lightning_cat.diffusion.hub import HUB_MODELS, LOCAL_FOLDER_HINT, resolve_hub_name
from lightning_cat.diffusion.shape import SHAPE_MODELS, ensure_shape_model
from lightning_cat.diffusion.shape_upscaler import SHAPE_UPSCALERS, ensure_shape_upscaler
from lightning_cat.diffusion.testbed import TESTBED_MODELS, testbed_model_path
from lightning_cat.diffusion.tiny import TINY_MODELS, ensure_tiny_model
from lightning_cat.diffusion.tiny_upscaler import TINY_UPSCALERS, ensure_tiny_upscaler

if TYPE_CHECKING:
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

__all__ = [
    "COMPONENTS",
    "SCHEDULERS",
    "DiffusionComponents",
    "SchedulerName",
    "build_pipeline",
    "check_model_name",
    "load_components",
    "load_inference_scheduler",
    "load_upscale_pipeline",
    "load_vae",
    "resolve_model_path",
    "weight_dtype",
]

COMPONENTS = ("tokenizer", "text_encoder", "vae", "unet", "noise_scheduler")
#: Names of the models the library builds (tiny, shape) or ships (testbed) rather than downloads.
_BUILT_OR_SHIPPED = (*sorted(TINY_MODELS), *TESTBED_MODELS, *TINY_UPSCALERS, *SHAPE_MODELS, *SHAPE_UPSCALERS)

#: Inference schedulers selectable by name; ``default`` is the one the checkpoint ships.
SCHEDULERS = {
    "default": None,
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
}
SchedulerName = Literal[tuple(SCHEDULERS)]  # the keys above


@dataclass
class DiffusionComponents:
    """The parts of a Stable Diffusion checkpoint a module asked for (others are ``None``)."""

    source: str
    tokenizer: CLIPTokenizer | None = None
    text_encoder: CLIPTextModel | None = None
    vae: AutoencoderKL | None = None
    unet: UNet2DConditionModel | None = None
    noise_scheduler: DDPMScheduler | None = None

    @property
    def prediction_type(self) -> str:
        """``epsilon``, ``v_prediction`` or ``sample``, from the noise scheduler's config."""
        if self.noise_scheduler is None:
            raise ValueError("the noise scheduler was not loaded")
        return self.noise_scheduler.config.prediction_type


def weight_dtype(precision: str | int | None) -> torch.dtype:
    """The dtype frozen weights take under a Lightning ``precision`` setting (fp32 unless half)."""
    text = str(precision)
    if text.startswith("bf16"):
        return torch.bfloat16
    if text.startswith("16") or text == "half":
        return torch.float16
    return torch.float32


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def check_model_name(pretrained_model_name_or_path: str) -> None:
    """Cheap checks of a model name (nothing is built, loaded or downloaded).

    Raises:
        FileNotFoundError: for a path-like name that does not exist locally, or a file.
        ValueError: for an empty name, or a hub id that was removed (the message names the mirror).
    """
    name = str(pretrained_model_name_or_path).strip()
    if not name:
        raise ValueError("pretrained_model_name_or_path is empty; give a diffusers folder, a hub id or 'tiny'")
    if name in _BUILT_OR_SHIPPED or name in HUB_MODELS:
        return
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise FileNotFoundError(f"pretrained_model_name_or_path '{name}' is a file, not a diffusers folder")
        return
    if _looks_like_path(name):
        known = list(_BUILT_OR_SHIPPED) + list(HUB_MODELS)
        raise FileNotFoundError(
            f"pretrained_model_name_or_path '{name}' looks like a local path but does not exist "
            f"(or use a hub id, or one of {known})"
        )
    resolve_hub_name(name)  # refuses removed hub ids


def resolve_model_path(pretrained_model_name_or_path: str) -> str:
    """Map a name to what ``from_pretrained`` takes: ``tiny``/``tiny-v``/``tiny-upscaler`` and the shape
    models ``sd21-base-shape``/``sd21-shape`` to their built cache folder, ``testbed`` to the trained
    model folder shipped in the package, a short hub name (``sd21-base``, see
    :data:`~lightning_cat.diffusion.hub.HUB_MODELS`) to its hub id, a local folder to its path; other
    hub ids pass through.

    Raises:
        FileNotFoundError: for a path-like name that does not exist locally.
        ValueError: for an empty name or a removed hub id.
    """
    check_model_name(pretrained_model_name_or_path)
    name = str(pretrained_model_name_or_path).strip()
    if name in TINY_MODELS:
        return str(ensure_tiny_model(name))
    if name in TESTBED_MODELS:
        return str(testbed_model_path(name))
    if name in TINY_UPSCALERS:
        return str(ensure_tiny_upscaler(name))
    if name in SHAPE_MODELS:
        return str(ensure_shape_model(name))
    if name in SHAPE_UPSCALERS:
        return str(ensure_shape_upscaler(name))
    local = Path(name).expanduser()
    return str(local) if local.exists() else resolve_hub_name(name)


def _load_error(what: str, path: str, error: OSError) -> OSError:
    """An ``OSError`` naming what failed to load from where, and the way out for a hub id."""
    if Path(path).is_dir():
        return OSError(f"could not load {what} from '{path}': {error}")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    hint = "HF_HUB_OFFLINE is set, so only already-cached hub models load; " if offline else ""
    return OSError(
        f"could not load {what} of hub model '{path}' (the repository may be gone, private or not cached): "
        f"{hint}{LOCAL_FOLDER_HINT.replace('<id>', path)}. The error was: {error}"
    )


def _from_pretrained(cls: Any, path: str, subfolder: str, **kwargs: Any) -> Any:
    local = Path(path)
    if local.is_dir() and not (local / subfolder).is_dir():
        raise FileNotFoundError(f"'{path}' has no '{subfolder}' folder; is it a Stable Diffusion diffusers folder?")
    try:
        return cls.from_pretrained(path, subfolder=subfolder, **kwargs)
    except OSError as error:
        raise _load_error(f"'{subfolder}'", path, error) from error


def load_components(
    pretrained_model_name_or_path: str = "tiny",
    *,
    revision: str | None = None,
    variant: str | None = None,
    parts: Iterable[str] = COMPONENTS,
) -> DiffusionComponents:
    """Load the requested Stable Diffusion ``parts`` (see :data:`COMPONENTS`), in fp32.

    The training noise scheduler is a ``DDPMScheduler`` built from the checkpoint's scheduler
    config, as in the diffusers training scripts, so epsilon and v-prediction both work.
    """
    parts = tuple(parts)
    unknown = sorted(set(parts) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; choose from {list(COMPONENTS)}")
    path = resolve_model_path(pretrained_model_name_or_path)
    weights = {"revision": revision, "variant": variant}
    result = DiffusionComponents(source=str(pretrained_model_name_or_path))
    if "tokenizer" in parts:
        from transformers import CLIPTokenizer

        result.tokenizer = _from_pretrained(CLIPTokenizer, path, "tokenizer", revision=revision)
    if "text_encoder" in parts:
        from transformers import CLIPTextModel

        result.text_encoder = _from_pretrained(CLIPTextModel, path, "text_encoder", **weights)
    if "vae" in parts:
        result.vae = load_vae(pretrained_model_name_or_path, revision=revision, variant=variant)
    if "unet" in parts:
        from diffusers import UNet2DConditionModel

        result.unet = _from_pretrained(UNet2DConditionModel, path, "unet", **weights)
    if "noise_scheduler" in parts:
        from diffusers import DDPMScheduler

        result.noise_scheduler = _from_pretrained(DDPMScheduler, path, "scheduler", revision=revision)
    return result


def load_vae(
    pretrained_model_name_or_path: str = "tiny", *, revision: str | None = None, variant: str | None = None
) -> AutoencoderKL:
    """Load the checkpoint's ``AutoencoderKL`` (the ``vae`` subfolder)."""
    from diffusers import AutoencoderKL

    path = resolve_model_path(pretrained_model_name_or_path)
    return _from_pretrained(AutoencoderKL, path, "vae", revision=revision, variant=variant)


def load_inference_scheduler(
    pretrained_model_name_or_path: str = "tiny", name: str = "default", *, revision: str | None = None
) -> Any:
    """The sampling scheduler: the checkpoint's own (``default``) or one of :data:`SCHEDULERS`."""
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {list(SCHEDULERS)}")
    path = resolve_model_path(pretrained_model_name_or_path)
    class_name = SCHEDULERS[name]
    if class_name is None:
        config_file = Path(path) / "scheduler" / "scheduler_config.json"
        if config_file.is_file():
            class_name = json.loads(config_file.read_text())["_class_name"]
        else:
            from huggingface_hub import hf_hub_download

            try:
                downloaded = hf_hub_download(path, "scheduler/scheduler_config.json", revision=revision)
            except OSError as error:
                raise _load_error("the scheduler config", path, error) from error
            class_name = json.loads(Path(downloaded).read_text())["_class_name"]
    return _from_pretrained(getattr(diffusers, class_name), path, "scheduler", revision=revision)


def build_pipeline(
    components: DiffusionComponents,
    scheduler: str = "default",
    *,
    revision: str | None = None,
) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` over already-loaded (possibly adapted) components.

    Missing components are loaded from ``components.source``. No safety checker is attached.
    """
    from diffusers import StableDiffusionPipeline

    missing = [p for p in ("tokenizer", "text_encoder", "vae", "unet") if getattr(components, p) is None]
    if missing:
        loaded = load_components(components.source, revision=revision, parts=missing)
        for part in missing:
            setattr(components, part, getattr(loaded, part))
    pipeline = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=load_inference_scheduler(components.source, scheduler, revision=revision),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def load_upscale_pipeline(
    pretrained_model_name_or_path: str = "tiny-upscaler",
    *,
    revision: str | None = None,
    variant: str | None = None,
    torch_dtype: Any = None,
) -> StableDiffusionUpscalePipeline:
    """A ``StableDiffusionUpscalePipeline`` (e.g. ``sd-x4-upscaler`` or ``tiny-upscaler``) without
    safety checker or watermarker, progress bar off."""
    from diffusers import StableDiffusionUpscalePipeline

    path = resolve_model_path(pretrained_model_name_or_path)
    local = Path(path)
    if local.is_dir() and not (local / "model_index.json").is_file():
        raise FileNotFoundError(f"'{path}' has no model_index.json; is it a diffusers upscaler pipeline folder?")
    # fp32 is the default; only half dtypes are passed (newer diffusers rename the argument).
    dtype = {} if torch_dtype is None or torch_dtype == torch.float32 else {"torch_dtype": torch_dtype}
    try:
        pipeline = StableDiffusionUpscalePipeline.from_pretrained(
            path,
            revision=revision,
            variant=variant,
            safety_checker=None,
            feature_extractor=None,
            watermarker=None,
            **dtype,
        )
    except OSError as error:
        raise _load_error("the upscaler pipeline", path, error) from error
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
