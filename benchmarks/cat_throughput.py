"""CAT adapter training throughput: CATAdapterModule under the Trainer vs a plain PyTorch loop.

Both train the same peft model (same VAE, variant, rank, batch, resolution, AdamW + cosine) on
the same images; each runs in its own process so peak memory is its own. Reported: optimizer
steps/s after warm-up, and peak memory (CUDA: max allocated; CPU: peak resident set size).

    python benchmarks/cat_throughput.py                                   # tiny model, CPU
    python benchmarks/cat_throughput.py --model sd21-base \
        --resolution 512 --rank 128 --batch-size 4 --steps 30 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _images(batch_size: int, resolution: int, device: str):
    import torch

    generator = torch.Generator().manual_seed(0)
    return (torch.rand(batch_size, 3, resolution, resolution, generator=generator) * 2 - 1).to(device)


def _peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_plain(args) -> dict:
    """The plain loop: the same objective, optimizer and schedule, no Trainer."""
    import torch

    from lightning_cat.cat import CATLoss, add_cat_adapter, cat_lora_config, cat_optimizer, per_image_noise
    from lightning_cat.diffusion import latent_shape, load_vae
    from lightning_cat.optimization import apply_gradients

    torch.manual_seed(0)
    images = _images(args.batch_size, args.resolution, args.device)
    # frozen VAE in eval mode, LoRA layers in train mode: as under CATAdapterModule
    model = add_cat_adapter(load_vae(args.model).eval().to(args.device), cat_lora_config(args.variant, rank=args.rank))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = cat_optimizer(trainable, args.warmup + args.steps)
    loss = CATLoss("mse")
    shape = latent_shape(model.get_base_model(), images.shape)
    indices = list(range(args.batch_size))
    start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
        noise = per_image_noise(shape, indices, 0, step).to(args.device)
        apply_gradients(loss(model, images, noise).loss, optimizer, trainable)
        scheduler.step()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"steps_per_s": args.steps / (time.perf_counter() - start), "peak_mb": _peak_memory_mb(args.device)}


def run_lightning(args) -> dict:
    """CATAdapterModule.fit on the same batch, timed from the end of the warm-up steps."""
    import torch
    from lightning.pytorch import Callback, Trainer
    from torch.utils.data import DataLoader, Dataset

    from lightning_cat.modules import CATAdapterModule

    images = _images(args.batch_size, args.resolution, "cpu")

    class Repeat(Dataset):
        def __len__(self):
            return 10**9

        def __getitem__(self, index):
            return {"image": images[index % len(images)], "index": index % len(images)}

    class Timer(Callback):
        start = 0.0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == args.warmup:
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                self.start = time.perf_counter()

    torch.manual_seed(0)
    timer = Timer()
    module = CATAdapterModule(
        args.model,
        adapter_variant=args.variant,
        lora_rank=args.rank,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    trainer = Trainer(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu",
        devices=1,
        max_steps=args.warmup + args.steps,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, DataLoader(Repeat(), batch_size=args.batch_size))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"steps_per_s": args.steps / (time.perf_counter() - timer.start), "peak_mb": _peak_memory_mb(args.device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--variant", default="both", choices=["both", "encoder", "decoder"])
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="the module's VAE gradient checkpointing (lightning only)"
    )
    parser.add_argument("--precision", default="32-true", help="the Trainer's precision (lightning only)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--only", choices=["plain", "lightning"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.only:
        result = run_plain(args) if args.only == "plain" else run_lightning(args)
        print(json.dumps(result))
        return
    results = {}
    for mode in ("plain", "lightning"):
        command = [sys.executable, __file__, *sys.argv[1:], "--only", mode]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(output.strip().splitlines()[-1])
    setting = (
        f"{args.model}, {args.variant}, rank {args.rank}, {args.resolution} px, batch {args.batch_size}, {args.device}"
    )
    print(f"CAT adapter training ({setting}; {args.steps} timed steps after {args.warmup})")
    print("| loop | steps/s | peak memory (MB) |\n|---|---:|---:|")
    for mode, label in (("plain", "plain PyTorch (same peft model)"), ("lightning", "CATAdapterModule + Trainer")):
        print(f"| {label} | {results[mode]['steps_per_s']:.2f} | {results[mode]['peak_mb']:.0f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"setting": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
