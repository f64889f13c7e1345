"""Build the ``testbed`` model: a trained, Stable-Diffusion-shaped text-to-image model for CPUs.

    pip install -c constraints.txt -e ".[recipe]"        # scikit-learn: two of the photographs
    python benchmarks/testbed/make_testbed_model.py      # writes lightning_cat/diffusion/testbed_model

Design (fixed before training; see ``lightning_cat/diffusion/testbed_model/DATA_CARD.md``):

* Components: the CAT testbed VAE of ``tests/data/testbed/vae`` (trained on offline scikit-image
  photographs, 22.4 dB held-out PSNR, downsampling factor 4: 64 px images give 4x16x16 latents),
  reused as it is except for ``scaling_factor`` (set here to 1 / the std of the training latents,
  as Stable Diffusion's 0.18215 is for its own VAE); a ``UNet2DConditionModel`` (cross-attention
  down/up blocks, epsilon prediction) and a small ``CLIPTextModel`` (hidden size 32, so that the
  49,408-token embedding stays at 6 MB) trained together from scratch; the real CLIP tokenizer
  (built offline as for ``tiny``); the DDIM scheduler of ``tiny`` (SD's scaled-linear betas).
  All weights fp32 safetensors (transformers may load fp16 files as fp16; the library works in
  fp32), under 30 MB in total.
* Data: real photographs that install offline with the locked packages (scikit-image, matplotlib,
  scikit-learn), each with one caption naming its class ("a photo of a motorcycle", ...). The
  demo subjects (astronaut, chelsea, coffee, rocket) and the CAT testbed's camera are HELD OUT.
  Random crops of an image pyramid (shorter side 64-256 px) with horizontal flips give a few
  thousand 64 px training images per photograph, encoded once to VAE latents (posterior mean).
  Captions are dropped (empty prompt) 10% of the time so classifier-free guidance works.
* Objective: the DDPM epsilon loss of the diffusers training scripts, AdamW, EMA of the UNet.
* What the tests assert (tests/test_testbed_model.py), fixed before the model was sampled:
  (1) DreamBooth (LoRA and full) on the demo subject brings samples of "a photo of sks person" closer to the subject than the
  base model's samples, on the nearest-subject SSIM (see ``lightning_cat.metrics.subject``);
  (2) the samples are images, not noise: mean neighbouring-pixel correlation
  (:func:`lightning_cat.metrics.subject.pixel_correlation`) >= 0.7 and mean BRISQUE <= 60 (the
  demo's subject photographs: 0.90-0.95 and -4 to 46 at 64 px; the random ``tiny`` model: 0.49
  and 14-19; an untrained UNet through this VAE: 0.83 and 155; i.i.d. noise: 0 and 88-100).
  The BRISQUE bound was added (after the untrained-UNet control) while this model trained.

Seeded and single-threaded, so a rerun on this machine gives the same files (checked: a rebuild
into a fresh ``--out`` wrote every weight file byte for byte as shipped); ``testbed.json``
beside the model records the recipe, the losses and the training time.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

OUT = REPO / "lightning_cat" / "diffusion" / "testbed_model"
VAE_FOLDER = REPO / "tests" / "data" / "testbed" / "vae"
RESOLUTION = 64
PYRAMID = (64, 80, 96, 128, 160, 192, 256)
HELD_OUT = ("astronaut", "chelsea", "coffee", "rocket", "camera")

#: source -> caption. ``skimage:<name>`` is ``skimage.data.<name>()``; ``mpl:`` and ``sklearn:`` are
#: files shipped in matplotlib's sample_data and scikit-learn's datasets/images.
SOURCES = {
    "skimage:motorcycle_left": "a photo of a motorcycle",
    "skimage:motorcycle_right": "a photo of a motorcycle",
    "skimage:brick": "a photo of a brick wall",
    "skimage:grass": "a photo of grass",
    "skimage:gravel": "a photo of gravel",
    "skimage:hubble_deep_field": "a photo of galaxies in space",
    "skimage:immunohistochemistry": "a microscope photo of tissue",
    "skimage:retina": "a photo of a retina",
    "skimage:moon": "a photo of the moon surface",
    "skimage:coins": "a photo of coins",
    "skimage:clock": "a photo of a clock",
    "skimage:cell": "a microscope photo of a cell",
    "skimage:page": "a photo of a page of text",
    "skimage:text": "a photo of a sign with text",
    "mpl:grace_hopper.jpg": "a photo of a person",
    "sklearn:china.jpg": "a photo of a temple",
    "sklearn:flower.jpg": "a photo of a flower",
}

UNET_CONFIG = {
    "sample_size": RESOLUTION // 4,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64, 128),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "use_linear_projection": True,
    "norm_num_groups": 16,
}
TEXT_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 32,
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
    "hidden_act": "quick_gelu",
}


def _rgb(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        array = (255 * (array - array.min()) / max(1e-8, float(array.max() - array.min()))).astype(np.uint8)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(array[..., :3]))


def load_source(source: str) -> Image.Image:
    """One training photograph, RGB."""
    kind, name = source.split(":", 1)
    if name.split(".")[0] in HELD_OUT:
        raise ValueError(f"{source} is a held-out subject")
    if kind == "skimage":
        from skimage import data

        if name.startswith("motorcycle_"):
            left, right, _ = data.stereo_motorcycle()
            return _rgb(left if name.endswith("left") else right)
        return _rgb(getattr(data, name)())
    if kind == "mpl":
        import matplotlib

        return Image.open(Path(matplotlib.get_data_path()) / "sample_data" / name).convert("RGB")
    if kind == "sklearn":
        import sklearn

        return Image.open(Path(sklearn.__file__).parent / "datasets" / "images" / name).convert("RGB")
    raise ValueError(f"unknown source kind in {source!r}")


def _pyramid(photo: Image.Image) -> list[torch.Tensor]:
    from lightning_cat.images import pil_to_tensor

    levels = []
    for short in PYRAMID:
        scale = short / min(photo.size)
        if scale <= 1:
            size = (max(RESOLUTION, round(photo.width * scale)), max(RESOLUTION, round(photo.height * scale)))
            levels.append(pil_to_tensor(photo.resize(size, Image.Resampling.BICUBIC)))
    return levels


def training_latents(vae, crops_per_source: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (posterior mean, unscaled) of random crops, and each crop's caption index."""
    latents, labels = [], []
    for index, source in enumerate(SOURCES):
        levels = _pyramid(load_source(source))
        crops = []
        for _ in range(crops_per_source):
            image = levels[int(torch.randint(len(levels), (1,), generator=generator))]
            top = int(torch.randint(image.shape[1] - RESOLUTION + 1, (1,), generator=generator))
            left = int(torch.randint(image.shape[2] - RESOLUTION + 1, (1,), generator=generator))
            patch = image[:, top : top + RESOLUTION, left : left + RESOLUTION]
            crops.append(patch.flip(-1) if bool(torch.rand((), generator=generator) < 0.5) else patch)
        with torch.no_grad():
            for chunk in torch.stack(crops).split(128):
                latents.append(vae.encode(chunk).latent_dist.mean)
        labels.append(torch.full((crops_per_source,), index))
    return torch.cat(latents), torch.cat(labels)


def _tokens(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def train(args, folder: Path) -> dict:
    """Train UNet + text encoder on the latents; write all components to ``folder``."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from lightning_cat.diffusion.tiny import write_clip_tokenizer, write_model_index

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    write_clip_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    vae = AutoencoderKL.from_pretrained(VAE_FOLDER).eval().requires_grad_(False)
    start = time.time()
    latents, labels = training_latents(vae, args.crops_per_source, generator)
    scaling = float(1 / latents.std())
    latents = latents * scaling
    encode_seconds = time.time() - start
    print(f"{len(latents)} latents in {encode_seconds:.0f} s, scaling factor {scaling:.4f}", flush=True)

    captions = list(SOURCES.values()) + [""]
    caption_ids = _tokens(tokenizer, captions)
    unet = UNet2DConditionModel(**UNET_CONFIG).train()
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    scheduler_config = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "epsilon",
    }
    noise_scheduler = DDPMScheduler(**{k: v for k, v in scheduler_config.items() if k != "set_alpha_to_one"})
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    warmup = 200

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup))) * 0.9 + 0.1

    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    log, running = [], 0.0
    start = time.time()
    for step in range(args.steps):
        pick = torch.randint(len(latents), (args.batch_size,), generator=generator)
        batch = latents[pick]
        text = labels[pick].clone()
        text[torch.rand(args.batch_size, generator=generator) < args.caption_dropout] = len(captions) - 1
        noise = torch.randn(batch.shape, generator=generator)
        timesteps = torch.randint(1000, (args.batch_size,), generator=generator)
        noisy = noise_scheduler.add_noise(batch, noise, timesteps)
        hidden = text_encoder(caption_ids[text])[0]
        loss = F.mse_loss(unet(noisy, timesteps, hidden).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for averaged, current in zip(ema.parameters(), unet.parameters(), strict=True):
                averaged.lerp_(current, 1 - decay)
        running += loss.item()
        if (step + 1) % 100 == 0:
            log.append({"step": step + 1, "loss": round(running / 100, 5), "seconds": round(time.time() - start)})
            print(json.dumps(log[-1]), flush=True)
            running = 0.0
    train_seconds = time.time() - start

    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    # from_pretrained recorded where the VAE was read from (this checkout's absolute path): not shipped.
    vae_config = folder / "vae" / "config.json"
    config = json.loads(vae_config.read_text(encoding="utf-8"))
    config.pop("_name_or_path", None)
    vae_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    ema.save_pretrained(folder / "unet", safe_serialization=True)
    text_encoder.eval().save_pretrained(folder / "text_encoder", safe_serialization=True)
    DDIMScheduler(**scheduler_config).save_pretrained(folder / "scheduler")
    write_model_index(folder, "DDIMScheduler")
    return {
        "recipe": {k: v for k, v in vars(args).items() if k not in ("out", "overwrite")},
        "sources": SOURCES,
        "held_out": list(HELD_OUT),
        "training_latents": len(latents),
        "vae": "tests/data/testbed/vae (unchanged weights), scaling_factor set to 1/std of the training latents",
        "scaling_factor": scaling,
        "unet_config": UNET_CONFIG,
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "text_config": TEXT_CONFIG,
        "text_parameters": sum(p.numel() for p in text_encoder.parameters()),
        "training_log": log,
        "encode_seconds": round(encode_seconds),
        "training_seconds": round(train_seconds),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--crops-per-source", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: bit-reproducible)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    weights = args.out / "unet"
    if weights.exists() and not args.overwrite:
        sys.exit(f"'{weights}' exists; pass --overwrite to replace the model")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", dir=args.out.parent))
    staging.chmod(0o755)
    try:
        record = train(args, staging)
        (staging / "testbed.json").write_text(json.dumps(record, indent=1) + "\n")
        args.out.mkdir(exist_ok=True)
        for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            if (args.out / part).exists():
                shutil.rmtree(args.out / part)
            os.rename(staging / part, args.out / part)
        for name in ("model_index.json", "testbed.json"):
            os.replace(staging / name, args.out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"testbed model written to {args.out}: {record['training_seconds'] / 60:.1f} min of training")


if __name__ == "__main__":
    main()
