"""CAT fidelity study for any VAE: does a CAT adapter undo a protection beyond fitting the VAE?

Prints (and optionally writes) the table of lightning_cat.studies.cat_fidelity: latent distortion
(relative, under the same encoder, and against the original clean latents), reconstruction error
against the clean images, for clean / uniform noise / random +-eps / each protection / CAT
variants trained on the protected images / the control CAT trained on uniform-noise images.

    python benchmarks/cat_fidelity.py                                  # the CPU testbed (tests/data/testbed)
    python benchmarks/cat_fidelity.py --model sd21-base \
        --images data/subject --resolution 512 --rank 128 --learning-rate 1e-4 --steps 10000 \
        --batch-size 4 --attack-steps 1000 --device cuda                # the paper's setting on a GPU

The protections (--attacks) are the study's target-latent encoder attack (PhotoGuard encoder
attack / Mist textural loss: PGD with sign steps towards the latent of a checkerboard) and its
reconstruction attack (PGD maximizing the VAE's reconstruction error against the clean image),
both at budget --eps.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def load_images(folder: str, resolution: int, device: str):
    """Every image of ``folder``, preprocessed like ImageFolderDataModule does (8-bit levels)."""
    import torch

    from lightning_cat.datamodules import ImageFolderDataset
    from lightning_cat.images import ImageTransform

    dataset = ImageFolderDataset(folder, ImageTransform(resolution=resolution))
    return torch.stack([dataset.load(index) for index in range(len(dataset))]).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "tests" / "data" / "testbed"), help="folder, hub id or tiny")
    parser.add_argument("--images", default=str(REPO / "tests" / "data" / "testbed" / "clean"), help="clean images")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--eps", type=float, default=16.0, help="budget in /255")
    parser.add_argument("--attacks", default="encoder,reconstruction", help="protections studied (comma-separated)")
    parser.add_argument("--attack-steps", type=int, default=100)
    parser.add_argument("--attack-step-size", type=float, default=1.0, help="in /255")
    parser.add_argument("--variants", default="both,encoder,decoder")
    parser.add_argument("--no-control", action="store_true")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()

    import torch

    from lightning_cat.diffusion import load_vae
    from lightning_cat.studies.cat_fidelity import (
        checkerboard,
        fidelity_study,
        format_fidelity_table,
        reconstruction_attack,
        target_latent_encoder_attack,
    )

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.time()
    vae = load_vae(args.model).to(args.device)
    clean = load_images(args.images, args.resolution, args.device)
    budget = {"eps_255": args.eps, "step_size_255": args.attack_step_size, "steps": args.attack_steps}
    encoder = functools.partial(
        target_latent_encoder_attack, target=checkerboard(args.resolution).to(args.device), **budget
    )
    attacks = {
        "encoder": (f"encoder attack {args.eps:g}/255", lambda model, images, generator: encoder(model, images)),
        "reconstruction": (
            f"reconstruction attack {args.eps:g}/255",
            lambda model, images, generator: reconstruction_attack(model, images, **budget),
        ),
    }
    unknown = sorted(set(args.attacks.split(",")) - set(attacks))
    if unknown:
        raise SystemExit(f"unknown attacks {unknown}; choose from {sorted(attacks)}")
    rows = fidelity_study(
        vae,
        clean,
        dict(attacks[name] for name in args.attacks.split(",")),
        eps_255=args.eps,
        variants=[v for v in args.variants.split(",") if v],
        control=not args.no_control,
        cat_options={
            "rank": args.rank,
            "learning_rate": args.learning_rate,
            "steps": args.steps,
            "batch_size": args.batch_size,
        },
        seed=args.seed,
        progress=True,
    )
    print(
        f"\nCAT fidelity study: {args.model}, {len(clean)} images from {args.images} at {args.resolution} px; "
        f"CAT rank {args.rank}, lr {args.learning_rate:g}, {args.steps} steps, batch {args.batch_size} "
        f"({time.time() - start:.0f} s)\n"
    )
    print(format_fidelity_table(rows))
    if args.out is not None:
        args.out.write_text(
            json.dumps([{"name": r.name, "gap_closed": r.gap_closed, **r.metrics} for r in rows], indent=1)
        )


if __name__ == "__main__":
    main()
