"""Seconds per image of every purifier, with the settings of its configs/purify/<name>.tiny.yaml.

Each purifier runs in its own process (so its peak RSS is its own) on the 64 px test photographs,
on the offline tiny models, CPU. Beside each model-based purifier a plain-PyTorch baseline times
the same number of raw model calls with no library code around them (for noisy upscaling: the
diffusers pipeline called directly), so the difference is the library's overhead.

    python benchmarks/purification_speed.py                      # all purifiers, 1 thread
    python benchmarks/purification_speed.py --threads 2 --images 4 --only latent_gridpure

Results: a table on stdout and benchmarks/results/purification_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "purify"
NAMES = ("jpeg", "blur", "resize", "tv", "noisy_upscale", "latent_diffpure", "latent_gridpure", "impress")


def purifier_from_config(name: str):
    import yaml

    import lightning_cat.purification as purification

    spec = yaml.safe_load((CONFIGS / f"{name}.tiny.yaml").read_text())["model"]["init_args"]["purifier"]
    return getattr(purification, spec["class_path"].rsplit(".", 1)[-1])(**spec.get("init_args", {}))


def load_images(count: int, resolution: int):
    import torch

    sys.path.insert(0, str(ROOT / "tests" / "data"))
    import make_images

    from lightning_cat.images import ImageTransform, load_image

    folder = Path(tempfile.mkdtemp(prefix="purify-bench-"))
    names = (make_images.PHOTOS * count)[:count]
    make_images.write_photos(folder, names=sorted(set(names)), size=max(80, resolution))
    transform = ImageTransform(resolution=resolution)
    return torch.stack([transform(load_image(folder / f"{n}.png")) for n in names])


def baseline(name: str, purifier, images) -> float | None:
    """Seconds per image of the raw model calls the purifier makes (``None``: no model)."""
    import torch

    from lightning_cat.purification.sdedit import sdedit_timesteps

    if name in ("jpeg", "blur", "resize", "tv"):
        return None
    generator = torch.Generator().manual_seed(0)
    models = purifier.models("cpu")
    start = time.perf_counter()
    with torch.no_grad():
        if name == "noisy_upscale":
            from PIL import Image

            from lightning_cat.images import tensor_to_pil

            side = images.shape[-1] // 4
            for image in images:
                small = tensor_to_pil(image).resize((side, side), Image.Resampling.BICUBIC)
                models["pipeline"](
                    prompt=purifier.prompt.format(class_name=purifier.class_name),
                    image=small,
                    num_inference_steps=purifier.num_inference_steps,
                    guidance_scale=purifier.guidance_scale,
                    noise_level=purifier.noise_level,
                    generator=generator,
                    output_type="pt",
                )
        elif name in ("latent_diffpure", "latent_gridpure"):
            vae, unet = models["vae"], models["unet"]
            steps = len(sdedit_timesteps(purifier.timestep, purifier.num_inference_steps))
            rounds, chunks = 1, list(images.split(1))
            if name == "latent_gridpure":  # per image and round: 9 tiles of half the image + 1 corner mosaic
                tile = images.shape[-1] // 2
                rounds, chunks = purifier.iterations, [torch.zeros(10, 3, tile, tile)] * len(images)
            for chunk in chunks:
                context = torch.zeros(len(chunk), 77, unet.config.cross_attention_dim)
                for _ in range(rounds):
                    latents = vae.encode(chunk).latent_dist.mean
                    for t in range(steps):
                        unet(latents, t, encoder_hidden_states=context)
                    vae.decode(latents)
            return (time.perf_counter() - start) / len(images)
    if name == "impress":
        vae, lpips = models["vae"], models["lpips"]
        for image in images.split(1):
            x = image.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([x], lr=0.01)
            for _ in range(purifier.iterations):
                optimizer.zero_grad()
                loss = (vae(x).sample - x).pow(2).mean() + 0.1 * lpips(x, image).sum()
                loss.backward()
                optimizer.step()
    return (time.perf_counter() - start) / len(images)


def measure(name: str, count: int, resolution: int, threads: int) -> dict:
    import torch

    from lightning_cat.purification import purification_generator

    torch.set_num_threads(threads)
    images = load_images(count, resolution)
    purifier = purifier_from_config(name)
    warm = time.perf_counter()
    purifier(images[:1], generator=purification_generator(0, "warmup"))  # loads the model
    first_call = time.perf_counter() - warm
    start = time.perf_counter()
    for index, image in enumerate(images):
        purifier(image[None], generator=purification_generator(0, str(index)))
    seconds = (time.perf_counter() - start) / count
    return {
        "purifier": name,
        "options": purifier.params(),
        "images": count,
        "resolution": resolution,
        "threads": threads,
        "seconds_per_image": seconds,
        "first_call_seconds": first_call,
        "baseline_seconds_per_image": baseline(name, purifier, images),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=NAMES, action="append", help="purifier(s) to time (default: all)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "purification_speed.json"))
    args = parser.parse_args()
    names = args.only or list(NAMES)
    if args.worker:
        print(json.dumps(measure(names[0], args.images, args.resolution, args.threads)))
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    rows = []
    for name in names:
        command = [sys.executable, __file__, "--worker", "--only", name, "--images", str(args.images)]
        command += ["--resolution", str(args.resolution), "--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        row = rows[-1]
        base = row["baseline_seconds_per_image"]
        print(
            f"{name:16s} {row['seconds_per_image']:8.3f} s/image   baseline "
            f"{'   n/a' if base is None else f'{base:6.3f}'} s/image   peak RSS {row['peak_rss_mb']:6.0f} MB",
            flush=True,
        )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    output.write_text(json.dumps({"load_average_1_5_15": load, "results": rows}, indent=2) + "\n")
    print(f"wrote {output} (load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f})")


if __name__ == "__main__":
    main()
