"""The tables of ``benchmarks/scale.md`` from ``results/scale.json`` (written by ``scale.py``).

    python benchmarks/scale_report.py

Per measurement: seconds per step and peak RSS on this machine, the ratio to its baseline, and
the GPU memory expected in bf16, split into frozen weights (2 bytes per parameter), trained
parameters with their gradients and AdamW states (fp32: 4 + 4 + 8 bytes, as the bf16-mixed
training keeps them) and activations. Activations are measured: the peak RSS minus the process's
RSS before loading, minus 4 bytes per loaded parameter (the safetensors weights are memory-mapped,
so they enter the RSS as the first step touches them, not at loading), minus the trained
parameters' gradient and optimizer bytes, halved for bf16 (not for the ``bf16`` measurements,
whose frozen weights, 2 bytes per parameter, and activations are in bf16 already).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scale.json"

# Parameter counts of the SD 2.1 networks (the shape models have the published ones; tests/test_scale.py).
UNET, TEXT, VAE = 865_910_724, 340_387_840, 83_653_863
ALL = UNET + TEXT + VAE
#: sd-x4-upscaler-shape: its UNet (473.4 M), VAE (55.3 M) and the same text encoder.
UPSCALER = 473_398_020 + 55_325_927 + TEXT
HALF_UNET, HALF_TEXT = 216_594_404, 97_842_176  # scale.half_width_model(): every UNet / text-encoder width halved
LORA_16, CAT_128 = 3_319_808, 27_099_136  # UNet attention LoRA rank 16; CAT "both" rank 128 (counted on the models)
#: The evaluation's own networks (counted on scale.evaluation_weights()'s files): open_clip ViT-L-14, ViT-B-32 and
#: RN50, torch-fidelity's FID Inception-v3, LPIPS's AlexNet features (dlib's models are not torch parameters).
CLIP_L14, CLIP_B32, CLIP_RN50, INCEPTION, ALEX = 427_616_513, 151_277_313, 102_007_137, 23_850_960, 2_469_696
#: RSS of a process that imported torch, diffusers and lightning_cat, before any weight is read (measured:
#: 890 MB after loading the 15 MB tiny model, 934 MB after mapping the 5 GB shape model).
PROCESS_MB = 880

#: measurement -> (what it runs, frozen parameters, trained parameters, baseline measurement[,
#: bytes held per trained parameter: 16 = fp32 weights, gradients and AdamW's two states (the
#: default); 10 with 8-bit AdamW (4 + 4 + 2); 20 with a second weight copy on the device (ASPL's
#: theta'); 24 for ASPL's reference loop (the loaded model, its round copy, the phase's copy); with
#: the optimizer-state stash weights and gradients plus one of about eight sets' states: 8.25
#: (8-bit AdamW), 9 (fp32 AdamW)])
STAGES = {
    "advdm_plus/lightning_cat": ("AdvDM+ 1 PGD step, 512 px, 1 image", ALL, 0, "advdm_plus/baseline"),
    "advdm_plus_gc/lightning_cat": (
        "AdvDM+ as above, gradient checkpointing (VAE, UNet)",
        ALL,
        0,
        "advdm_plus/baseline",
    ),
    "advdm_plus/baseline": ("AdvDM+ plain PGD loop", ALL, 0, None),
    "photoguard/lightning_cat": ("PhotoGuard (encoder) 1 PGD step, 512 px", VAE, 0, None),
    "aspl/lightning_cat": (
        "ASPL 1 iteration (1 surrogate step, 1 PGD step), UNet + text encoder",
        VAE,
        UNET + TEXT,
        "aspl/baseline",
        20,
    ),
    "aspl/baseline": ("ASPL reference loop (deep copies)", VAE, UNET + TEXT, None, 24),
    "aspl_half/lightning_cat": (
        "ASPL as above, half-width SD 2.1 (UNet 217 M + text 98 M), no prior rows, theta stashed on disk",
        VAE,
        HALF_UNET + HALF_TEXT,
        "aspl_half/baseline",
    ),
    "aspl_half_device/lightning_cat": (
        "ASPL half-width, theta stashed beside the model (theta_stash: device)",
        VAE,
        HALF_UNET + HALF_TEXT,
        "aspl_half/baseline",
        20,
    ),
    "aspl_half_8bit/lightning_cat": (
        "ASPL half-width, theta on disk, 8-bit AdamW",
        VAE,
        HALF_UNET + HALF_TEXT,
        "aspl_half/baseline",
        10,
    ),
    "aspl_half_gc/lightning_cat": (
        "ASPL half-width, theta on disk, gradient checkpointing",
        VAE,
        HALF_UNET + HALF_TEXT,
        "aspl_half/baseline",
    ),
    "aspl_half_8bit_gc/lightning_cat": (
        "ASPL half-width, theta on disk, 8-bit AdamW, gradient checkpointing",
        VAE,
        HALF_UNET + HALF_TEXT,
        "aspl_half/baseline",
        10,
    ),
    "aspl_half/baseline": (
        "ASPL reference loop (deep copies), half-width, 1 step per phase",
        VAE,
        HALF_UNET + HALF_TEXT,
        None,
        24,
    ),
    "aspl_half_3steps/lightning_cat": (
        "ASPL half-width, theta on disk, the reference's 3 surrogate steps per phase",
        VAE,
        HALF_UNET + HALF_TEXT,
        "aspl_half_3steps/baseline",
    ),
    "aspl_half_8bit_gc_3steps/lightning_cat": (
        "ASPL half-width, theta on disk, 8-bit AdamW, gradient checkpointing, 3 surrogate steps per phase",
        VAE,
        HALF_UNET + HALF_TEXT,
        "aspl_half_3steps/baseline",
        10,
    ),
    "aspl_half_lean_3steps/lightning_cat": (
        "ASPL half-width, theta on disk, 8-bit AdamW, checkpointing, optimizer states on disk between steps, 3 surrogate steps per phase",
        VAE,
        HALF_UNET + HALF_TEXT,
        "aspl_half_3steps/baseline",
        8.25,
    ),
    "aspl_half_fp32_lean_3steps/lightning_cat": (
        "ASPL half-width, fp32 AdamW (the reference's), theta and optimizer states on disk, checkpointing, 3 surrogate steps per phase",
        VAE,
        HALF_UNET + HALF_TEXT,
        "aspl_half_3steps/baseline",
        9,
    ),
    "aspl_fp32_lean_2steps/lightning_cat": (
        "ASPL full size, fp32 AdamW, theta and optimizer states on disk, checkpointing, 2 surrogate steps per phase",
        VAE,
        UNET + TEXT,
        None,
        9,
    ),
    "aspl_half_3steps_returned/baseline": (
        "ASPL reference loop, half-width, 3 surrogate steps per phase; freed memory returned at once",
        VAE,
        HALF_UNET + HALF_TEXT,
        None,
        24,
    ),
    "aspl_half_8bit_gc_3steps_returned/lightning_cat": (
        "ASPL half-width, theta on disk, 8-bit AdamW, checkpointing, 3 surrogate steps; freed memory returned at once",
        VAE,
        HALF_UNET + HALF_TEXT,
        "aspl_half_3steps_returned/baseline",
        10,
    ),
    "aspl_half_lean_3steps_returned/lightning_cat": (
        "ASPL half-width as aspl_half_lean_3steps; freed memory returned at once",
        VAE,
        HALF_UNET + HALF_TEXT,
        "aspl_half_3steps_returned/baseline",
        8.25,
    ),
    "aspl_half_fp32_lean_3steps_returned/lightning_cat": (
        "ASPL half-width as aspl_half_fp32_lean_3steps; freed memory returned at once",
        VAE,
        HALF_UNET + HALF_TEXT,
        "aspl_half_3steps_returned/baseline",
        9,
    ),
    "aspl_lean_2steps/lightning_cat": (
        "ASPL full size, theta on disk, 8-bit AdamW, checkpointing, optimizer states on disk, 2 surrogate steps per phase",
        VAE,
        UNET + TEXT,
        None,
        8.25,
    ),
    "vae_encoder_backward/blocks": (
        "VAE encoder forward + backward to the pixels, 512 px, diffusers' per-block checkpoints",
        VAE,
        0,
        None,
    ),
    "vae_encoder_backward/layers": (
        "VAE encoder as above, layerwise_checkpoint",
        VAE,
        0,
        "vae_encoder_backward/blocks",
    ),
    "vae_encoder_backward_returned/blocks": (
        "as vae_encoder_backward/blocks; freed memory returned at once",
        VAE,
        0,
        None,
    ),
    "vae_encoder_backward_returned/layers": (
        "as vae_encoder_backward/layers; freed memory returned at once",
        VAE,
        0,
        "vae_encoder_backward_returned/blocks",
    ),
    "aspl_half_3steps/baseline": (
        "ASPL reference loop (deep copies), half-width, 3 surrogate steps per phase (the reference's)",
        VAE,
        HALF_UNET + HALF_TEXT,
        None,
        24,
    ),
    "aspl_stash/lightning_cat": (
        "ASPL 1 iteration (1 step per phase, no prior rows), theta stashed on disk",
        VAE,
        UNET + TEXT,
        None,
    ),
    "aspl_stash_8bit/lightning_cat": (
        "ASPL as above, theta on disk, 8-bit AdamW",
        VAE,
        UNET + TEXT,
        None,
        10,
    ),
    "aspl_stash_8bit_gc/lightning_cat": (
        "ASPL as above, theta on disk, 8-bit AdamW, gradient checkpointing",
        VAE,
        UNET + TEXT,
        None,
        10,
    ),
    "aspl_stash_8bit_2steps/lightning_cat": (
        "ASPL as above, theta on disk, 8-bit AdamW, 2 surrogate steps per phase",
        VAE,
        UNET + TEXT,
        None,
        10,
    ),
    "aspl_stash_8bit_bf16/lightning_cat": (
        "ASPL as above, theta on disk, 8-bit AdamW, bf16-mixed (ProtectionModule under the Trainer)",
        VAE,
        UNET + TEXT,
        None,
        10,
    ),
    "mist/lightning_cat": ("Mist 1 PGD step (UNet + textural loss), 512 px", ALL, 0, None),
    "sds_plus/lightning_cat": ("SDS(+) 1 PGD step, 512 px", ALL, 0, None),
    "sds_minus/lightning_cat": ("SDS(-) 1 PGD step, 512 px", ALL, 0, None),
    "sdst/lightning_cat": ("SDST 1 PGD step (SDS(-) + textural loss), 512 px", ALL, 0, None),
    "advdm_minus/lightning_cat": ("AdvDM(-) 1 PGD step, 512 px", ALL, 0, None),
    "advdm_plus_bf16/lightning_cat": (
        "AdvDM+ 1 PGD step, bf16-mixed (ProtectionModule under the Trainer: loading, the step, the PNG written)",
        ALL,
        0,
        None,
    ),
    "glaze_style/lightning_cat": ("Glaze-style 1 PGD step (1 img2img style step, random LPIPS)", ALL, 0, None),
    "caat/lightning_cat": ("CAAT 1 step (cross-attention k/v + PGD), 512 px", ALL, 0, None),
    "fsmg_8bit/lightning_cat": (
        "FSMG 1 surrogate step + 1 PGD step, 1+1 rows, 8-bit AdamW",
        VAE,
        UNET + TEXT,
        None,
        10,
    ),
    "fsmg_8bit_2steps/lightning_cat": (
        "FSMG as above, 2 surrogate steps (the second beside AdamW's states)",
        VAE,
        UNET + TEXT,
        None,
        10,
    ),
    "metacloak_disk_8bit/lightning_cat": (
        "MetaCloak, pool of 2 snapshots stashed on disk, 1 cycle each (2 PGD + 3 surrogate steps), 1+1 rows, "
        "8-bit AdamW",
        VAE,
        UNET + TEXT,
        None,
        10,
    ),
    "metacloak_pool6_disk_8bit/lightning_cat": (
        "MetaCloak, the default pool of 6 snapshots stashed on disk, 1 cycle each (6 PGD + 11 surrogate steps), "
        "1+1 rows, 8-bit AdamW",
        VAE,
        UNET + TEXT,
        None,
        10,
    ),
    "cat/lightning_cat": ("CAT rank 128, batch 1, 512 px", VAE, CAT_128, "cat/plain"),
    "cat/plain": ("CAT plain loop, batch 1", VAE, CAT_128, None),
    "cat_batch4/lightning_cat": ("CAT rank 128, batch 4, 512 px", VAE, CAT_128, None),
    "cat_gc/lightning_cat": ("CAT rank 128, batch 1, 512 px, gradient checkpointing", VAE, CAT_128, "cat/plain"),
    "cat_batch4_gc/lightning_cat": ("CAT rank 128, batch 4, 512 px, gradient checkpointing", VAE, CAT_128, None),
    "cat_gc_bf16/lightning_cat": ("CAT rank 128, batch 1, checkpointing, bf16-mixed", VAE, CAT_128, None),
    "cat_batch4_gc_bf16/lightning_cat": ("CAT rank 128, batch 4, checkpointing, bf16-mixed", VAE, CAT_128, None),
    "lora/module_cache": ("DreamBooth LoRA r16, 1+1 rows, 512 px, cached latents", ALL, LORA_16, "lora/plain"),
    "lora/plain": ("DreamBooth LoRA, diffusers-style loop (re-encodes every step)", ALL, LORA_16, None),
    "lora_bf16/module_cache": ("DreamBooth LoRA, bf16-mixed, 1+1 rows, 512 px", ALL, LORA_16, None),
    "lora_768v/module_cache": ("DreamBooth LoRA, sd21-shape 768 px v-prediction, 1+1 rows", ALL, LORA_16, None),
    "lora_steady/module_cache": (
        "DreamBooth LoRA, 1+1 rows, 512 px, cached latents: steps 3-4 (after an epoch of 2+2 images)",
        ALL,
        LORA_16,
        "lora_steady/plain",
    ),
    "lora_steady/plain": ("DreamBooth LoRA, the re-encoding loop: steps 3-4", ALL, LORA_16, None),
    "dreambooth_full_gc/lightning_cat": (
        "DreamBooth full (UNet + text encoder), 2+2 rows, checkpointing",
        VAE,
        UNET + TEXT,
        None,
    ),
    "dreambooth_full_gc_8bit/lightning_cat": (
        "DreamBooth full, 2+2 rows, checkpointing, 8-bit AdamW",
        VAE,
        UNET + TEXT,
        None,
        10,
    ),
    "dreambooth_full_gc_8bit_bf16/lightning_cat": (
        "DreamBooth full, 2+2 rows, checkpointing, 8-bit AdamW, bf16-mixed",
        VAE,
        UNET + TEXT,
        None,
        10,
    ),
    "dreambooth_full_gc_8bit_bf16_2steps/lightning_cat": (
        "DreamBooth full as above, 2 steps (the second runs beside AdamW's states), per step",
        VAE,
        UNET + TEXT,
        None,
        10,
    ),
    "dreambooth_full_8bit_bf16/lightning_cat": (
        "DreamBooth full, 2+2 rows, no checkpointing, 8-bit AdamW, bf16-mixed",
        VAE,
        UNET + TEXT,
        None,
        10,
    ),
    "sampling/lightning_cat": ("sampling, 2 steps, CFG 7.5, 512 px", ALL, 0, "sampling/baseline"),
    "sampling/baseline": ("diffusers pipeline called directly", ALL, 0, None),
    "purify_jpeg/lightning_cat": ("JPEG, 512 px", 0, 0, None),
    "purify_tv/lightning_cat": ("TV denoising, 512 px", 0, 0, None),
    "purify_latent_diffpure/lightning_cat": ("latent DiffPure, t* 100, 2 steps, 512 px", ALL, 0, None),
    "purify_impress/lightning_cat": ("IMPRESS, 1 Adam step, 512 px", VAE, 0, None),
    "purify_latent_gridpure/lightning_cat": (
        "latent GrIDPure, 1 iteration over 10 tiles of 256 px (9 every 128 px, the corner mosaic), 2 steps each, 512 px",
        ALL,
        0,
        None,
    ),
    "purify_noisy_upscale/lightning_cat": (
        "noisy upscaling, 512 px -> 128 px -> x4 upscaler (sd-x4-upscaler-shape), guidance 9, per step",
        UPSCALER,
        0,
        None,
    ),
    "evaluate_latent_distortion/lightning_cat": ("latent distortion (VAE), 1 pair, 512 px", VAE, 0, None),
    "evaluate_antidreambooth/lightning_cat": (
        "configs/eval/metrics.antidreambooth.sd21.yaml (FID, CLIP ViT-L-14, LPIPS, BRISQUE, dlib FDFR / ISM, "
        "latent distortion), per image of 4 clean + 4 protected + 4 generated, 512 px",
        CLIP_L14 + INCEPTION + ALEX + VAE,
        0,
        None,
    ),
    "evaluate_cat/lightning_cat": (
        "configs/eval/metrics.cat.sd21.yaml (CLIP-IQA RN50 without positions, LPIPS, dlib FDFR / ISM, latent "
        "distortion), per image as above",
        CLIP_RN50 + ALEX + VAE,
        0,
        None,
    ),
    "evaluate_liu/lightning_cat": (
        "configs/eval/metrics.liu.sd21.yaml (CLIP-IQAC ViT-B-32, LPIPS, BRISQUE, dlib FDFR / ISM, latent "
        "distortion), per image as above",
        CLIP_B32 + ALEX + VAE,
        0,
        None,
    ),
}


def gpu_bf16_gb(name: str, row: dict) -> tuple[float, float, float] | None:
    """(weights, trained parameters + gradients + AdamW, activations) in GiB expected in bf16."""
    _, frozen, trained, _, *rest = STAGES[name]
    trained_bytes = rest[0] if rest else 16
    if not row.get("fits"):
        return None
    half = "bf16" in name  # measured under bf16-mixed: frozen weights and activations already in bf16
    state_mb = ((2 if half else 4) * frozen + trained_bytes * trained) / 2**20  # weights; trained + grads + AdamW
    activations = max(row["peak_rss_mb"] - PROCESS_MB - state_mb, 0.0) / (1 if half else 2)
    return (2 * frozen / 2**30, trained_bytes * trained / 2**30, activations / 1024)


def table(rows: list[dict]) -> str:
    by_name = {row["measurement"]: row for row in rows}
    lines = [
        "| measurement | what | s / step | peak RSS (GiB) | time ratio | memory ratio | GPU bf16: weights + trained + activations (GiB) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, (what, _, _, baseline, *_) in STAGES.items():
        row = by_name.get(name)
        if row is None:
            lines.append(f"| {name} | {what} | not run | | | | |")
            continue
        if row.get("fits") is None:
            lines.append(f"| {name} | {what} | failed (its error is in results/scale.json) | | | | |")
            continue
        if not row.get("fits"):
            reason = row.get("stopped")
            reached = row["watched_peak_rss_mb"] / 1024
            lines.append(
                f"| {name} | {what} | does not fit ({reason}; {reached:.1f} GiB reached after {row['wall_s']:.0f} s) | | | | |"
            )
            continue
        ratio_t = ratio_m = ""
        base = by_name.get(baseline) if baseline else None
        if base is not None and base.get("fits"):
            ratio_t = f"{row['seconds_per_step'] / base['seconds_per_step']:.2f}"
            ratio_m = f"{row['peak_rss_mb'] / base['peak_rss_mb']:.2f}"
        gpu = gpu_bf16_gb(name, row)
        gpu_text = f"{gpu[0]:.1f} + {gpu[1]:.1f} + {gpu[2]:.1f} = {sum(gpu):.1f}" if gpu else ""
        lines.append(
            f"| {name} | {what} | {row['seconds_per_step']:.1f} | {row['peak_rss_mb'] / 1024:.1f} | {ratio_t} | "
            f"{ratio_m} | {gpu_text} |"
        )
    return "\n".join(lines)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    print(table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
