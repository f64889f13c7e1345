"""PGD throughput and peak memory of AdvDM and ASPL: lightning_cat beside a reference-style loop.

    python benchmarks/protection_throughput.py                 # tiny and small, CPU, writes results
    python benchmarks/protection_throughput.py --configs tiny --device cuda

For each model config (``tiny``: the offline tiny model at 64 px; ``small``: the same
architecture families built the same way but wider and deeper, at 128 px) and each method,
two implementations run the same number of PGD steps on the same images:

* ``lightning_cat``: ``build_protection(...).protect(...)`` (per-image seeded draws; ASPL with
  one surrogate copy allocated up front and refreshed by ``load_state_dict``, clean latents
  encoded once);
* ``baseline``: a straightforward loop written the way the reference code does it (AdvDM: one
  batched PGD loop; ASPL: ``deepcopy`` of UNet and text encoder for the surrogate every
  iteration and again inside every training phase, images re-encoded every training step).

Each measurement runs in its own process, so peak memory is not hidden by an earlier run:
peak RSS growth over the process's RSS before the run on CPU (sampled every 2 ms), or
``torch.cuda.max_memory_allocated`` on CUDA. Throughput is PGD steps per second of wall time
(for ASPL including its surrogate training). Each implementation runs ``--repeats`` times in
alternating order; medians are reported. Nothing here is asserted; see README.md.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "protection_throughput.json"
#: Work per measurement: (batch, AdvDM steps, ASPL iterations, ASPL PGD steps per iteration).
WORK = {"tiny": (4, 10, 3, 2), "small": (2, 6, 2, 2)}
RESOLUTION = {"tiny": 64, "small": 128}


# ----------------------------------------------------------------------------- models


def build_components(config: str, device: str):
    """``tiny`` as shipped, or ``small``: the tiny recipe scaled up (random weights, in memory)."""
    import torch

    from lightning_cat.diffusion import load_components

    components = load_components("tiny")
    if config == "small":
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        torch.manual_seed(0)
        components.unet = UNet2DConditionModel(
            sample_size=RESOLUTION["small"] // 4,
            in_channels=4,
            out_channels=4,
            block_out_channels=(64, 128, 256),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=128,
            attention_head_dim=8,
            use_linear_projection=True,
            norm_num_groups=32,
        )
        components.vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(64, 128, 128),
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            latent_channels=4,
            layers_per_block=2,
            norm_num_groups=32,
            sample_size=RESOLUTION["small"],
        )
        components.text_encoder = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=128,
                intermediate_size=512,
                num_attention_heads=4,
                num_hidden_layers=4,
                projection_dim=128,
                vocab_size=49408,
                max_position_embeddings=77,
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
                hidden_act="quick_gelu",
            )
        )
    for part in ("unet", "vae", "text_encoder"):
        getattr(components, part).to(device).requires_grad_(False).eval()
    return components


def parameter_count(components) -> int:
    return sum(p.numel() for part in ("unet", "vae", "text_encoder") for p in getattr(components, part).parameters())


# ----------------------------------------------------------------------------- reference-style baselines


def baseline_advdm(components, images, steps: int, eps: float, alpha: float):
    import torch
    import torch.nn.functional as F

    vae, unet, scheduler = components.vae, components.unet, components.noise_scheduler
    ids = components.tokenizer(
        ["a photo"] * len(images), padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids.to(images.device)
    with torch.no_grad():
        hidden = components.text_encoder(ids)[0]
    x_adv = images.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        latents = vae.encode(x_adv).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(images),), device=images.device)
        prediction = unet(scheduler.add_noise(latents, noise, t), t, hidden).sample
        loss = F.mse_loss(prediction, noise)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.clamp(images + torch.clamp(x_adv - images, -eps, eps), -1, 1)
    return x_adv


def _train_one_epoch(components, models, data, steps: int, lr: float):
    """The reference's training phase: deep-copies the models, trains them, returns the copies."""
    import torch
    import torch.nn.functional as F

    unet, text_encoder = copy.deepcopy(models[0]), copy.deepcopy(models[1])
    unet.requires_grad_(True)
    text_encoder.requires_grad_(True)
    params = list(itertools.chain(unet.parameters(), text_encoder.parameters()))
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    vae, scheduler = components.vae, components.noise_scheduler
    ids = components.tokenizer(
        ["a photo of sks person"], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids.to(data.device)
    for step in range(steps):
        pixels = data[step % len(data)].unsqueeze(0)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), device=data.device)
        prediction = unet(scheduler.add_noise(latents, noise, t), t, text_encoder(ids)[0]).sample
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
    return [unet, text_encoder]


def baseline_aspl(
    components, images, iterations: int, pgd_steps: int, eps: float, alpha: float, surrogate_steps: int = 3
):
    import torch
    import torch.nn.functional as F

    vae, scheduler = components.vae, components.noise_scheduler
    f = [components.unet, components.text_encoder]
    ids = components.tokenizer(
        ["a photo of sks person"] * len(images),
        padding="max_length",
        max_length=77,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(images.device)
    perturbed = images.clone()
    for _ in range(iterations):
        f_sur = copy.deepcopy(f)
        f_sur = _train_one_epoch(components, f_sur, images, surrogate_steps, 5e-7)
        unet, text_encoder = f_sur
        unet.requires_grad_(False)
        text_encoder.requires_grad_(False)
        for _ in range(pgd_steps):
            perturbed.requires_grad_(True)
            latents = vae.encode(perturbed).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (len(images),), device=images.device)
            prediction = unet(scheduler.add_noise(latents, noise, t), t, text_encoder(ids)[0]).sample
            loss = F.mse_loss(prediction.float(), noise.float())
            (grad,) = torch.autograd.grad(loss, perturbed)
            perturbed = perturbed.detach() + alpha * grad.sign()
            perturbed = torch.clamp(images + torch.clamp(perturbed - images, -eps, eps), -1, 1).detach()
        f = _train_one_epoch(components, f, perturbed, surrogate_steps, 5e-7)
    return perturbed


# ----------------------------------------------------------------------------- one measurement


class PeakMemory:
    """Peak growth of process RSS (CPU) or of allocated CUDA memory during a ``with`` block."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.start)
            time.sleep(0.002)

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss() - self.start)


def measure(config: str, method: str, implementation: str, device: str) -> dict:
    import torch

    from lightning_cat.protections import build_protection, to_model_units

    torch.manual_seed(0)
    batch, advdm_steps, aspl_iterations, aspl_pgd = WORK[config]
    components = build_components(config, device)
    resolution = RESOLUTION[config]
    images = (torch.rand(batch, 3, resolution, resolution) * 255).round().div(127.5).sub(1).to(device)
    keys = [f"image{i}" for i in range(batch)]
    if method == "advdm":
        pgd_steps = advdm_steps
        eps, alpha = to_model_units(16), to_model_units(1)
        if implementation == "baseline":
            run = lambda: baseline_advdm(components, images, advdm_steps, eps, alpha)  # noqa: E731
        else:
            protection = build_protection(
                "advdm_plus", components, steps=advdm_steps, alpha_255=1, eps_255=16, show_progress=False
            )
            run = lambda: protection.protect(images, keys, seed=0)  # noqa: E731
    else:
        pgd_steps = aspl_iterations * aspl_pgd
        eps, alpha = to_model_units(6.375), to_model_units(0.6375)
        if implementation == "baseline":
            run = lambda: baseline_aspl(components, images, aspl_iterations, aspl_pgd, eps, alpha)  # noqa: E731
        else:
            protection = build_protection(
                "aspl",
                components,
                iterations=aspl_iterations,
                steps=aspl_pgd,
                surrogate_steps=3,
                train_text_encoder=True,
                show_progress=False,
                in_place=True,  # like the reference, which trains the loaded model itself
            )
            run = lambda: protection.protect(images, keys, seed=0)  # noqa: E731
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {
        "config": config,
        "resolution": resolution,
        "parameters": parameter_count(components),
        "method": method,
        "implementation": implementation,
        "batch": batch,
        "pgd_steps": pgd_steps,
        "seconds": seconds,
        "pgd_steps_per_s": pgd_steps / seconds,
        "peak_memory_mb": memory.peak / 2**20,
        "device": device,
        "threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------- driver


def table(rows: list[dict]) -> str:
    lines = [
        "| config | method | implementation | PGD steps/s | peak memory (MB) | speed ratio | memory ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        base = next(
            r
            for r in rows
            if r["config"] == row["config"] and r["method"] == row["method"] and r["implementation"] == "baseline"
        )
        speed = row["pgd_steps_per_s"] / base["pgd_steps_per_s"]
        memory = row["peak_memory_mb"] / base["peak_memory_mb"] if base["peak_memory_mb"] > 0 else float("nan")
        lines.append(
            f"| {row['config']} ({row['resolution']} px, {row['parameters'] / 1e6:.1f} M) | {row['method']} | "
            f"{row['implementation']} | {row['pgd_steps_per_s']:.2f} | {row['peak_memory_mb']:.0f} | "
            f"{speed:.2f} | {memory:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "small"], choices=sorted(WORK))
    parser.add_argument("--methods", nargs="+", default=["advdm", "aspl"], choices=["advdm", "aspl"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--repeats", type=int, default=3, help="runs per implementation (medians are reported)")
    parser.add_argument("--one", nargs=3, metavar=("CONFIG", "METHOD", "IMPLEMENTATION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.device)))
        return
    rows = []
    for config, method in itertools.product(args.configs, args.methods):
        runs: dict[str, list[dict]] = {"baseline": [], "lightning_cat": []}
        for repeat in range(args.repeats):
            # Alternate the order so a change in machine load does not favour one side.
            order = ("baseline", "lightning_cat") if repeat % 2 == 0 else ("lightning_cat", "baseline")
            for implementation in order:
                command = [sys.executable, __file__, "--device", args.device, "--one", config, method, implementation]
                result = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=True)
                runs[implementation].append(json.loads(result.stdout.strip().splitlines()[-1]))
                print(
                    f"{config} {method} {implementation}: {runs[implementation][-1]['pgd_steps_per_s']:.3f} steps/s",
                    file=sys.stderr,
                )
        for measured in runs.values():
            row = dict(measured[0])
            row["repeats"] = len(measured)
            for key in ("seconds", "pgd_steps_per_s", "peak_memory_mb"):
                row[key] = statistics.median(m[key] for m in measured)
                row[f"{key}_all"] = [m[key] for m in measured]
            rows.append(row)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
