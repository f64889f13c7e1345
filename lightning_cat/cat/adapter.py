"""CAT adapters: LoRA on the frozen VAE (Peng et al., ICML 2025), in plain peft: config per variant, save, load.

An adapter is a peft ``PeftModel`` folder (``adapter_model.safetensors`` +
``adapter_config.json``) that loads onto a plain ``AutoencoderKL`` with peft alone::

    from peft import PeftModel
    vae = PeftModel.from_pretrained(AutoencoderKL.from_pretrained(path, subfolder="vae"), adapter_dir)

:func:`load_cat_vae` does that (and merges the weights) for the customization and sampling code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lightning_cat.atomic import check_output_dir, staged_dir
from lightning_cat.diffusion.loading import load_vae, resolve_model_path
from lightning_cat.options import choices

if TYPE_CHECKING:
    from diffusers import AutoencoderKL
    from peft import LoraConfig, PeftModel

__all__ = [
    "CAT_TARGET_MODULES",
    "CAT_VARIANTS",
    "CATVariant",
    "LoraInit",
    "add_cat_adapter",
    "cat_base_model_name",
    "cat_lora_config",
    "cat_target_modules",
    "load_cat_vae",
    "save_cat_adapter",
]

#: Layer names CAT adapts (conv_in/conv_out, conv_shortcut, (post_)quant_conv and norms are not).
CAT_TARGET_MODULES = ("conv", "conv1", "conv2", "to_q", "to_k", "to_v", "to_out.0")
CATVariant = Literal["both", "encoder", "decoder"]
CAT_VARIANTS = choices(CATVariant)
#: LoRA init: ``gaussian`` and ``kaiming`` start at the unchanged VAE (``B = 0``), ``zeros`` zeroes both factors.
LoraInit = Literal["gaussian", "kaiming", "zeros"]


def cat_target_modules(variant: str = "both") -> list[str] | str:
    """peft ``target_modules`` for a CAT variant: a name list (``both``) or a full-match regex."""
    if variant not in CAT_VARIANTS:
        raise ValueError(f"unknown CAT variant {variant!r}; choose one of {list(CAT_VARIANTS)}")
    if variant == "both":
        return list(CAT_TARGET_MODULES)
    names = "|".join(name.replace(".", r"\.") for name in CAT_TARGET_MODULES)
    return rf".*{variant}\..*\.({names})$"


def cat_lora_config(
    variant: str = "both",
    rank: int = 128,
    alpha: float | None = None,
    init: LoraInit = "gaussian",
    dropout: float = 0.0,
) -> LoraConfig:
    """The LoRA config of a CAT adapter (reference: rank 128, alpha = rank, gaussian init).

    ``gaussian`` and ``kaiming`` initialise ``B = 0``, so the adapted VAE starts exactly at the
    base VAE; ``zeros`` zeroes both factors.
    """
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"CAT adapter rank must be >= 1, got {rank}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"CAT adapter dropout must be in [0, 1), got {dropout}")
    inits = {"gaussian": "gaussian", "kaiming": True, "zeros": False}
    if init not in inits:
        raise ValueError(f"unknown CAT adapter init {init!r}; choose one of {list(inits)}")
    return LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        init_lora_weights=inits[init],
        lora_dropout=dropout,
        target_modules=cat_target_modules(variant),
    )


def add_cat_adapter(vae: AutoencoderKL, config: LoraConfig) -> PeftModel:
    """Wrap ``vae`` in a ``PeftModel`` with the CAT adapter; only LoRA weights require grad."""
    from peft import get_peft_model

    return get_peft_model(vae, config)


def cat_base_model_name(pretrained_model_name_or_path: str) -> str:
    """What an adapter's ``base_model_name_or_path`` records: the VAE it was trained on.

    A local checkpoint (``tiny`` included) gives the absolute path of its ``vae`` folder, which
    ``AutoencoderKL.from_pretrained`` loads as is; a hub model gives its hub id (short names
    resolved), whose VAE is the ``vae`` subfolder (``from_pretrained(id, subfolder="vae")``).
    """
    resolved = resolve_model_path(pretrained_model_name_or_path)
    local = Path(resolved).expanduser()
    return str(local.resolve() / "vae") if local.is_dir() else resolved


def save_cat_adapter(
    peft_vae: PeftModel,
    directory: str | os.PathLike,
    overwrite: bool = False,
    base_model_name_or_path: str | None = None,
    revision: str | None = None,
) -> Path:
    """Write the adapter (peft format, safetensors) to ``directory`` atomically; returns it.

    ``base_model_name_or_path`` / ``revision`` are recorded in ``adapter_config.json`` (see
    :func:`cat_base_model_name`), so the folder names the VAE it belongs to.

    Raises:
        FileExistsError: if ``directory`` exists and is not empty (unless ``overwrite``).
    """
    target = check_output_dir(directory, overwrite, owner="CAT adapter folder")
    config = peft_vae.peft_config[peft_vae.active_adapter]
    if base_model_name_or_path is not None:
        config.base_model_name_or_path = base_model_name_or_path
        config.revision = revision
    with staged_dir(target) as staging:
        peft_vae.save_pretrained(staging, safe_serialization=True)
    return target


def load_cat_vae(
    pretrained_model_name_or_path: str,
    adapter: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    variant: str | None = None,
    merge: bool = True,
) -> AutoencoderKL | PeftModel:
    """The checkpoint's VAE with a CAT adapter applied (the plain VAE when ``adapter`` is None).

    With ``merge`` (default) the LoRA weights are folded into a plain ``AutoencoderKL``, so the
    adapted encoder and decoder cost nothing extra; otherwise the ``PeftModel`` is returned.
    The returned model is frozen and in eval mode.

    Raises:
        FileNotFoundError: if ``adapter`` is not a folder with ``adapter_config.json``.
    """
    vae = load_vae(pretrained_model_name_or_path, revision=revision, variant=variant)
    if adapter is not None:
        from peft import PeftModel

        folder = Path(adapter)
        if not (folder / "adapter_config.json").is_file():
            raise FileNotFoundError(f"cat_adapter '{folder}' is not a CAT adapter folder (no adapter_config.json)")
        vae = PeftModel.from_pretrained(vae, folder)
        if merge:
            vae = vae.merge_and_unload()
    return vae.requires_grad_(False).eval()
