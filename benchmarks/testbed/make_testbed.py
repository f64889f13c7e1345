"""Build CAT's fidelity testbed: a tiny VAE trained on scikit-image photographs, plus image sets.

    python benchmarks/testbed/make_testbed.py            # writes tests/data/testbed (refuses to overwrite)

Writes, atomically (a temporary folder renamed at the end):

* ``vae/``: an ``AutoencoderKL`` in diffusers format (so ``load_vae("tests/data/testbed")`` and
  ``AutoencoderKL.from_pretrained(..., subfolder="vae")`` load it), about 2.7 MB;
* ``clean/``: the five subject photographs of the tests (astronaut, chelsea, coffee, rocket,
  camera), resized (shorter side 64, bicubic) and center-cropped to 64 px, as PNG. They are HELD
  OUT: the VAE never trains on them;
* ``protected/``: the same images protected with the fidelity study's target-latent encoder
  attack (16/255), PNGs plus ``manifest.json`` with the budget measured on the saved files;
* ``testbed.json``: the recipe, the training time and the held-out PSNR per subject.

Recipe (seeded, one CPU thread, deterministic): the VAE is trained on random crops of the other
offline scikit-image photographs (hubble_deep_field, immunohistochemistry, retina, colorwheel,
brick, grass, gravel, moon, coins, clock, cell, page, text, stereo_motorcycle left/right) at
shorter sides 48-256 px, with random channel order and horizontal flips. Phase 1: squared error
(+ KL 1e-6), 32 px crops, AdamW lr 1e-3. Phase 2: squared error + 0.5 L1 + a small patch
discriminator (hinge loss, weight 0.03), 48 px crops, lr 5e-4 with a cosine decay; the
adversarial term makes the decoder sharper, as Stable Diffusion's VAE training does.
"""

from __future__ import annotations

import argparse
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
SUBJECTS = ("astronaut", "chelsea", "coffee", "rocket", "camera")
TRAINING_PHOTOS = (
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "brick",
    "grass",
    "gravel",
    "moon",
    "coins",
    "clock",
    "cell",
    "page",
    "text",
)
PYRAMID = (48, 64, 96, 128, 192, 256)
RESOLUTION = 64
VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (16, 32, 64),
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "sample_size": RESOLUTION,
}


def _rgb(array: np.ndarray) -> Image.Image:
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(array[..., :3]))


def training_photos() -> list[Image.Image]:
    """The offline scikit-image photographs the VAE trains on (none of the subjects)."""
    from skimage import data

    photos = [_rgb(getattr(data, name)()) for name in TRAINING_PHOTOS]
    left, right, _ = data.stereo_motorcycle()
    return photos + [_rgb(left), _rgb(right)]


def subject_images(resolution: int = RESOLUTION) -> dict[str, torch.Tensor]:
    """The held-out subjects, preprocessed like ``ImageFolderDataModule(resolution=...)`` does."""
    from skimage import data

    from lightning_cat.images import ImageTransform

    transform = ImageTransform(resolution=resolution)
    return {name: transform(_rgb(getattr(data, name)())) for name in SUBJECTS}


def _pyramid(photos: list[Image.Image]) -> list[torch.Tensor]:
    from lightning_cat.images import pil_to_tensor

    levels = []
    for photo in photos:
        for short in PYRAMID:
            scale = short / min(photo.size)
            if scale <= 1:
                size = (round(photo.width * scale), round(photo.height * scale))
                levels.append(pil_to_tensor(photo.resize(size, Image.Resampling.BICUBIC)))
    return levels


def _batch(levels: list[torch.Tensor], generator: torch.Generator, size: int, crop: int) -> torch.Tensor:
    crops = []
    for _ in range(size):
        image = levels[int(torch.randint(len(levels), (1,), generator=generator))]
        top = int(torch.randint(image.shape[1] - crop + 1, (1,), generator=generator))
        left = int(torch.randint(image.shape[2] - crop + 1, (1,), generator=generator))
        patch = image[:, top : top + crop, left : left + crop][torch.randperm(3, generator=generator)]
        crops.append(patch.flip(-1) if bool(torch.rand((), generator=generator) < 0.5) else patch)
    return torch.stack(crops)


def _discriminator() -> torch.nn.Module:
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 32, 4, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(32, 64, 4, 2, 1),
        nn.GroupNorm(8, 64),
        nn.LeakyReLU(0.2),
        nn.Conv2d(64, 64, 3, 1, 1),
        nn.GroupNorm(8, 64),
        nn.LeakyReLU(0.2),
        nn.Conv2d(64, 1, 3, 1, 1),
    )


def held_out_psnr(vae, subjects: dict[str, torch.Tensor]) -> dict[str, float]:
    """PSNR (dB, data range of [-1, 1]) of each subject's reconstruction from the posterior mean."""
    images = torch.stack(list(subjects.values()))
    with torch.no_grad():
        reconstruction = vae.decode(vae.encode(images).latent_dist.mean).sample.clamp(-1, 1)
    mse = (reconstruction - images).pow(2).flatten(1).mean(1)
    return {name: float(10 * torch.log10(4 / value)) for name, value in zip(subjects, mse, strict=True)}


def train_vae(args, subjects: dict[str, torch.Tensor]):
    """Both training phases; returns the VAE and a log of held-out PSNR."""
    from diffusers import AutoencoderKL
    from tqdm.auto import tqdm

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    vae = AutoencoderKL(**VAE_CONFIG).train()
    levels = _pyramid(training_photos())
    log = []

    def evaluate(step: int) -> None:
        vae.eval()
        psnr = held_out_psnr(vae, subjects)
        vae.train()
        log.append({"step": step, "held_out_psnr": sum(psnr.values()) / len(psnr)})

    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    for step in tqdm(range(args.mse_steps), desc="phase 1 (squared error)"):
        images = _batch(levels, generator, args.batch_size, 32)
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=None)).sample
        loss = F.mse_loss(reconstruction, images) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 500 == 0:
            evaluate(step + 1)

    discriminator = _discriminator()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=5e-4, betas=(0.5, 0.9), weight_decay=0.0)
    disc_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.9), weight_decay=0.0)
    cosine = lambda step: 0.5 * (1 + math.cos(math.pi * step / max(1, args.gan_steps)))  # noqa: E731
    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, cosine) for opt in (optimizer, disc_optimizer)]
    for step in tqdm(range(args.gan_steps), desc="phase 2 (+ patch discriminator)"):
        images = _batch(levels, generator, args.batch_size, 48)
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction, images) + 0.5 * F.l1_loss(reconstruction, images)
        loss = loss - args.gan_weight * discriminator(reconstruction).mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        real, fake = discriminator(images), discriminator(reconstruction.detach())
        disc_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        disc_optimizer.zero_grad(set_to_none=True)
        disc_loss.backward()
        disc_optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
        if (step + 1) % 500 == 0:
            evaluate(args.mse_steps + step + 1)
    return vae.eval().requires_grad_(False), log


def write_sets(folder: Path, vae, subjects: dict[str, torch.Tensor], seed: int) -> dict:
    """clean/ and protected/ PNGs (with a manifest) of the subjects; returns the attack options."""
    from lightning_cat.images import ImageTransform, save_png
    from lightning_cat.imageset import measure_saved_image, write_manifest
    from lightning_cat.studies.cat_fidelity import checkerboard, target_latent_encoder_attack

    clean = torch.stack(list(subjects.values()))
    options = {"eps_255": 16.0, "step_size_255": 1.0, "steps": 100, "random_start": False}
    protected = target_latent_encoder_attack(vae, clean, checkerboard(RESOLUTION), **options)
    files = {}
    for index, name in enumerate(subjects):
        save_png(clean[index], folder / "clean" / f"{name}.png")
        save_png(protected[index], folder / "protected" / f"{name}.png")
        files[name] = {
            "source": f"skimage.data.{name}",
            **measure_saved_image(folder / "protected" / f"{name}.png", clean[index]),
        }
    manifest = {
        "method": "target_latent_encoder_attack",
        "params": {**options, "target": "checkerboard, 4 px cells"},
        "eps_255": options["eps_255"],
        "resolution": RESOLUTION,
        "preprocessing": ImageTransform(resolution=RESOLUTION).to_dict(),
        "seed": seed,
        "model": "tests/data/testbed",
        "files": files,
    }
    write_manifest(folder / "protected", manifest)
    return manifest["params"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "testbed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mse-steps", type=int, default=3000)
    parser.add_argument("--gan-steps", type=int, default=2000)
    parser.add_argument("--gan-weight", type=float, default=0.03)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: bit-reproducible)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    if args.out.exists() and not args.overwrite:
        sys.exit(f"'{args.out}' exists; pass --overwrite to replace it")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    start = time.time()
    subjects = subject_images()
    vae, log = train_vae(args, subjects)
    seconds = time.time() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", dir=args.out.parent))
    staging.chmod(0o755)
    try:
        vae.save_pretrained(staging / "vae", safe_serialization=True)
        attack = write_sets(staging, vae, subjects, args.seed)
        psnr = held_out_psnr(vae, subjects)
        record = {
            "recipe": {k: v for k, v in vars(args).items() if k not in ("out", "overwrite")},
            "vae_config": VAE_CONFIG,
            "training_photos": list(TRAINING_PHOTOS) + ["stereo_motorcycle (left, right)"],
            "held_out_subjects": list(SUBJECTS),
            "held_out_psnr": psnr,
            "mean_held_out_psnr": sum(psnr.values()) / len(psnr),
            "training_log": log,
            "training_seconds": round(seconds),
            "protected_set": attack,
            "torch": torch.__version__,
        }
        (staging / "testbed.json").write_text(json.dumps(record, indent=1))
        if args.out.exists():
            shutil.rmtree(args.out)
        os.rename(staging, args.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(
        f"testbed written to {args.out}: mean held-out PSNR {record['mean_held_out_psnr']:.2f} dB, {seconds / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
