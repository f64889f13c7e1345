"""DreamBooth training throughput: DreamBoothModule with and without latent caching, beside a
plain diffusers-style loop that encodes every image with the VAE at every step.

All three train the same LoRA (UNet attention, same rank) with prior preservation on the same
instance and class images, batch ``B`` instance + ``B`` class rows, AdamW, grad clip 1.0. Each
runs in its own process so its peak memory is its own. Reported: optimizer steps/s after
warm-up and peak memory (CUDA: max allocated; CPU: peak resident set size). The latent cache
encodes an image the first time a step sees it, so the warm-up must cover one epoch
(``--images`` / ``--batch-size`` steps) for the timed steps to show the cached loop.

    python benchmarks/dreambooth_throughput.py                     # tiny model, 64 px, CPU
    python benchmarks/dreambooth_throughput.py --model sd21-base \
        --resolution 512 --steps 30 --device cuda --precision bf16-mixed
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RUNS = ("plain", "module_no_cache", "module_cache")


def _peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _data(args):
    """Instance and class folders of real photographs (scikit-image), and the datamodule over them."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "data"))
    import make_images

    from lightning_cat.datamodules import DreamBoothDataModule

    root = Path(tempfile.mkdtemp(prefix="dreambooth-bench-"))
    size = max(args.resolution, 80)
    instance = ("astronaut", "chelsea", "coffee", "rocket", "camera")[: args.images]
    prior = ("moon", "coins", "clock", "brick", "grass")[: args.images]
    make_images.write_photos(root / "instance", names=instance, size=size)
    make_images.write_photos(root / "class", names=prior, size=size)
    return DreamBoothDataModule(
        str(root / "instance"),
        class_root=str(root / "class"),
        num_class_images=args.images,
        resolution=args.resolution,
        batch_size=args.batch_size,
        num_workers=0,
    )


def run_plain(args) -> dict:
    """What the reference scripts do: every step encodes every image and every prompt."""
    import torch
    import torch.nn.functional as F

    from lightning_cat.customization.lora import UNET_LORA_TARGETS, add_lora
    from lightning_cat.diffusion import load_components

    torch.manual_seed(0)
    dm = _data(args)
    parts = load_components(args.model)
    tokenizer, text_encoder, vae, unet, scheduler = (
        parts.tokenizer,
        parts.text_encoder.to(args.device).requires_grad_(False),
        parts.vae.to(args.device).requires_grad_(False),
        parts.unet.to(args.device),
        parts.noise_scheduler,
    )
    trainable = add_lora(unet, UNET_LORA_TARGETS, rank=args.rank)
    optimizer = torch.optim.AdamW(trainable, lr=5e-5, weight_decay=1e-2)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)
    autocast = torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype is not None)
    step, start = 0, 0.0
    while step < args.warmup + args.steps:
        for batch in dm.train_dataloader():
            if step == args.warmup:
                start = time.perf_counter()
            pixels = torch.cat([batch["image"], batch["class_image"]]).to(args.device)
            ids = tokenizer(
                list(batch["prompt"]) + list(batch["class_prompt"]),
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(args.device)
            with autocast:
                latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
                noise = torch.randn_like(latents)
                timesteps = torch.randint(
                    0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
                )
                noisy = scheduler.add_noise(latents, noise, timesteps)
                states = text_encoder(ids)[0]
                prediction = unet(noisy, timesteps, states).sample
            target = (
                noise
                if scheduler.config.prediction_type == "epsilon"
                else scheduler.get_velocity(latents, noise, timesteps)
            )
            instance_pred, prior_pred = prediction.float().chunk(2)
            instance_target, prior_target = target.float().chunk(2)
            loss = F.mse_loss(instance_pred, instance_target) + F.mse_loss(prior_pred, prior_target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == args.warmup + args.steps:
                break
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"steps_per_s": args.steps / (time.perf_counter() - start), "peak_mb": _peak_memory_mb(args.device)}


def run_module(args, cache: bool) -> dict:
    """DreamBoothModule under the Trainer, with latent caching on or off."""
    import torch
    from lightning.pytorch import Callback, Trainer

    from lightning_cat.modules import DreamBoothModule

    class Clock(Callback):
        start = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == args.warmup:
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                self.start = time.perf_counter()

    torch.manual_seed(0)
    dm = _data(args)
    module = DreamBoothModule(args.model, finetune="lora", lora_rank=args.rank, cache_latents=cache)
    clock = Clock()
    trainer = Trainer(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu",
        devices=1,
        precision=args.precision,
        max_steps=args.warmup + args.steps,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        default_root_dir=tempfile.mkdtemp(prefix="dreambooth-bench-logs-"),
    )
    trainer.fit(module, dm)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - clock.start
    return {"steps_per_s": args.steps / elapsed, "peak_mb": _peak_memory_mb(args.device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2, help="instance rows per step (as many class rows)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument(
        "--images",
        type=int,
        default=5,
        choices=range(1, 6),
        help="instance images (as many class images); the latent cache is full after one epoch of them",
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--run", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "dreambooth_throughput.json"))
    args = parser.parse_args()

    if args.run:
        result = run_plain(args) if args.run == "plain" else run_module(args, cache=args.run == "module_cache")
        print("RESULT " + json.dumps(result))
        return

    import torch

    results = {}
    for run in RUNS:
        command = [sys.executable, __file__, "--run", run] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("run", "output")
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"{run} failed:\n{done.stderr[-3000:]}")
        results[run] = json.loads(lines[-1][len("RESULT ") :])
        print(
            f"{run:>16}: {results[run]['steps_per_s']:.2f} steps/s, peak {results[run]['peak_mb']:.0f} MB", flush=True
        )
    record = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("run", "output")},
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "results": results,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
