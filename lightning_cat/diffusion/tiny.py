"""The offline tiny Stable-Diffusion-shaped model (``tiny`` / ``tiny-v``).

Random UNet, text encoder and VAE with Stable Diffusion's architecture families, and the real
CLIP tokenizer built offline from the BPE table that ``open_clip_torch`` ships. The model is
written once, deterministically, in diffusers format to a cache folder and then loaded through
the same ``from_pretrained`` path as any real checkpoint. 64 px images give 32x32 latents.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch

from lightning_cat.atomic import staging_dir

__all__ = [
    "TINY_MODELS",
    "TINY_RESOLUTION",
    "build_once",
    "cache_dir",
    "clip_bpe_path",
    "diffusers_version",
    "ensure_tiny_model",
    "write_clip_tokenizer",
]

#: Names accepted wherever a ``pretrained_model_name_or_path`` is, and their prediction type.
TINY_MODELS = {"tiny": "epsilon", "tiny-v": "v_prediction"}
#: The resolution the tiny model is meant for (configs use it).
TINY_RESOLUTION = 64
# Bump when the architecture or the written files change, so stale caches are not reused.
_TINY_FORMAT = 1
_SEED = 0
_NUM_MERGES = 49152 - 256 - 2  # CLIP's merge count: vocab 49,408 = 2*256 bytes + merges + 2 specials
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def cache_dir() -> Path:
    """Folder holding built tiny models: ``$LIGHTNING_CAT_CACHE`` or ``~/.cache/lightning_cat``."""
    return Path(os.environ.get("LIGHTNING_CAT_CACHE", Path.home() / ".cache" / "lightning_cat")).expanduser()


def clip_bpe_path() -> Path:
    """Path of the CLIP BPE table shipped inside ``open_clip_torch`` (located without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip_torch is required to build the tiny model's tokenizer")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"CLIP BPE table not found at '{path}'")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP / GPT-2 byte-level alphabet: printable bytes map to themselves, the rest to 256+n.
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def write_clip_tokenizer(folder: Path) -> None:
    """Write CLIP's vocab.json / merges.txt (49,408 tokens) built from the BPE table."""
    with gzip.open(clip_bpe_path(), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges] + [_BOS, _EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [" ".join(m) for m in merges]
    (folder / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "bos_token": _BOS,
        "eos_token": _EOS,
        "unk_token": _EOS,
        "pad_token": _EOS,
        "clean_up_tokenization_spaces": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    specials = {"bos_token": _BOS, "eos_token": _EOS, "unk_token": _EOS, "pad_token": _EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")


def _build(folder: Path, prediction_type: str) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(_SEED)
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=TINY_RESOLUTION,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            projection_dim=32,
            vocab_size=49408,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            hidden_act="quick_gelu",
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    scheduler.save_pretrained(folder / "scheduler")
    write_clip_tokenizer(folder / "tokenizer")
    write_model_index(folder, "DDIMScheduler")


def write_model_index(folder: Path, scheduler_class: str) -> None:
    """Write the ``model_index.json`` of a Stable Diffusion pipeline folder (no safety checker)."""
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "diffusers_version": diffusers_version(),
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2), encoding="utf-8")


def diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


@cache
def ensure_tiny_model(name: str = "tiny") -> Path:
    """Build the tiny model ``name`` once in :func:`cache_dir` and return its diffusers folder.

    Safe under concurrent calls (DDP ranks), see :func:`build_once`.
    """
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {sorted(TINY_MODELS)}")
    return build_once(f"{name}-f{_TINY_FORMAT}", lambda folder: _build(folder, TINY_MODELS[name]))


def build_once(tag: str, build: Callable[[Path], None]) -> Path:
    """Run ``build(folder)`` once per library versions and return ``cache_dir()/<tag>-<versions>``.

    A folder with a ``model_index.json`` is a finished build and is reused. Safe under concurrent
    calls (DDP ranks): each builder writes a private temporary folder and renames it into place;
    a loser of the race discards its copy.
    """
    import diffusers
    import transformers

    tag = f"{tag}-diffusers{diffusers.__version__}-transformers{transformers.__version__}"
    target = cache_dir() / tag
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(target)
    try:
        build(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "model_index.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
