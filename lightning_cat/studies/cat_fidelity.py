"""CAT's fidelity study: does a CAT adapter undo a protection, beyond what fitting the VAE does?

For a VAE and a set of clean images this measures, with
:class:`~lightning_cat.metrics.LatentDistortion`, the rows

* ``clean``: the base VAE on the clean images (its own reconstruction error);
* ``uniform noise`` and ``random +-eps``: the base VAE on noise of the protection's budget;
* each protection: the base VAE on the protected images;
* ``CAT <variant>``: a CAT adapter trained on the protected images only, evaluated on them;
* ``control``: the same CAT (variant ``both``) trained on the uniform-noise images instead,
  evaluated on the protected images. CAT's claim holds only where it beats this control.

``gap_closed`` is the share of the protection's reconstruction damage, measured against the
CLEAN images, that a CAT VAE removes: ``(e_prot - e_cat) / (e_prot - e_clean)`` where ``e_prot``
and ``e_clean`` are the base VAE's errors on protected and clean images and ``e_cat`` the CAT
VAE's error on the protected images (mean squared error against the clean images).

:func:`target_latent_encoder_attack` (PhotoGuard's encoder attack / Mist's textural loss) and
:func:`reconstruction_attack` (an end-to-end attack on the VAE's reconstruction) are the study's
built-in protections; any callable ``(vae, images, generator) -> protected`` can be passed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from lightning_cat.cat.training import train_cat_adapter
from lightning_cat.diffusion import latent_distribution
from lightning_cat.metrics.latent_distortion import LatentDistortion
from lightning_cat.pixels import to_model_units
from lightning_cat.protections.base import Objective
from lightning_cat.protections.pgd import PGD, quantize_within_budget
from lightning_cat.protections.photoguard import EncoderAttackObjective

__all__ = [
    "FidelityRow",
    "Protection",
    "ReconstructionAttackObjective",
    "checkerboard",
    "fidelity_study",
    "format_fidelity_table",
    "reconstruction_attack",
    "sign_noise",
    "target_latent_encoder_attack",
    "uniform_noise",
]

#: ``protection(vae, clean_images, generator) -> protected_images`` (all in ``[-1, 1]``).
Protection = Callable[[torch.nn.Module, torch.Tensor, torch.Generator], torch.Tensor]


def uniform_noise(images: torch.Tensor, eps_255: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``images`` plus uniform noise in ``[-eps, eps]``, on the 8-bit grid."""
    eps = to_model_units(eps_255)
    noise = (torch.rand(images.shape, generator=generator) * 2.0 - 1.0) * eps
    return quantize_within_budget(images + noise.to(images), images, eps_255)


def sign_noise(images: torch.Tensor, eps_255: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``images`` plus random ``+-eps`` per pixel (the largest noise of the budget), on the 8-bit grid."""
    eps = to_model_units(eps_255)
    signs = torch.randint(0, 2, images.shape, generator=generator).float() * 2.0 - 1.0
    return quantize_within_budget(images + eps * signs.to(images), images, eps_255)


def checkerboard(resolution: int, cell: int = 4) -> torch.Tensor:
    """A black-and-white checkerboard ``[3, R, R]`` in ``[-1, 1]``: the attack's default target texture."""
    rows, cols = torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")
    return (((rows // cell + cols // cell) % 2).float() * 2 - 1).expand(3, resolution, resolution).clone()


def target_latent_encoder_attack(
    vae: torch.nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    *,
    eps_255: float = 16.0,
    step_size_255: float = 1.0,
    steps: int = 100,
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Encoder attack with a target latent (PhotoGuard's encoder attack / Mist's textural loss).

    The library's :class:`~lightning_cat.protections.PGD` with sign steps descends PhotoGuard's
    :class:`~lightning_cat.protections.photoguard.EncoderAttackObjective`
    ``|| mu(E(x + delta)) - mu(E(y)) ||`` for a target image ``y``, under ``||delta||_inf <= eps``
    and ``x + delta`` in ``[-1, 1]``; the result is on the 8-bit grid within the budget.

    Args:
        vae: the VAE attacked (frozen; its gradients are not touched).
        images: clean images ``[B, 3, H, W]`` in ``[-1, 1]`` on 8-bit levels.
        target: the target image, ``[3, H, W]`` or ``[B, 3, H, W]``, in ``[-1, 1]``.
        eps_255: L_inf budget in /255 units.
        step_size_255: PGD step in /255 units.
        steps: PGD steps.
        random_start: start from uniform noise in the budget instead of ``x``.
        generator: RNG of the random start.

    Returns:
        The protected images, same shape and device as ``images``.
    """
    pgd = PGD(eps_255=eps_255, alpha_255=step_size_255, steps=steps, random_start=random_start)
    parameters = list(vae.parameters())
    requires_grad = [p.requires_grad for p in parameters]
    vae.requires_grad_(False)
    try:
        with torch.no_grad():
            target_batch = target.expand_as(images) if target.ndim == 3 else target
            target_latents = latent_distribution(vae, target_batch.to(images)).mean.float()
        objective = EncoderAttackObjective(vae, lambda batch: target_latents)
        generators = [generator] * len(images) if generator is not None else []
        return pgd.run(images, objective, generators)
    finally:
        for parameter, flag in zip(parameters, requires_grad, strict=True):
            parameter.requires_grad_(flag)


class ReconstructionAttackObjective(Objective):
    """``|| D(mu(E(x'))) - x ||^2`` per image, ascended: push the VAE's reconstruction away from
    the clean image ``x`` (an untargeted end-to-end attack on the VAE)."""

    ascend = True

    def __init__(self, vae, clean: torch.Tensor) -> None:
        self.vae = vae
        self.clean = clean

    def loss(self, images: torch.Tensor, draw=None) -> torch.Tensor:
        reconstruction = self.vae.decode(latent_distribution(self.vae, images).mean).sample
        return (reconstruction.float() - self.clean.float()).pow(2).flatten(1).sum(dim=1)


def reconstruction_attack(
    vae: torch.nn.Module,
    images: torch.Tensor,
    *,
    eps_255: float = 16.0,
    step_size_255: float = 1.0,
    steps: int = 100,
) -> torch.Tensor:
    """The study's strong protection: PGD sign steps maximizing the reconstruction error
    ``|| D(mu(E(x + delta))) - x ||^2`` under ``||delta||_inf <= eps``, on the 8-bit grid.

    Unlike the encoder attack it aims at the damage CAT's claim is about (the reconstruction), so
    it reaches the regime where the claim is testable on a small VAE (see benchmarks/README.md).
    """
    pgd = PGD(eps_255=eps_255, alpha_255=step_size_255, steps=steps)
    parameters = list(vae.parameters())
    requires_grad = [p.requires_grad for p in parameters]
    vae.requires_grad_(False)
    try:
        return pgd.run(images, ReconstructionAttackObjective(vae, images.detach()), [])
    finally:
        for parameter, flag in zip(parameters, requires_grad, strict=True):
            parameter.requires_grad_(flag)


@dataclass
class FidelityRow:
    """One row of the study: a condition, what was measured, and the share of the gap closed."""

    name: str
    metrics: dict[str, float]
    gap_closed: float | None = None
    notes: dict[str, str] = field(default_factory=dict)


def _measure(
    vae, protected: torch.Tensor, clean: torch.Tensor, reference=None, batch_size: int = 8
) -> dict[str, float]:
    metric = LatentDistortion(vae, reference_vae=reference).to(clean.device)
    for start in range(0, clean.shape[0], batch_size):
        metric.update(protected[start : start + batch_size], clean[start : start + batch_size])
    return {key: value.item() for key, value in metric.compute().items()}


def fidelity_study(
    vae: torch.nn.Module,
    clean: torch.Tensor,
    protections: Mapping[str, Protection],
    *,
    eps_255: float = 16.0,
    variants: Sequence[str] = ("both", "encoder", "decoder"),
    control: bool = True,
    cat_options: Mapping | None = None,
    seed: int = 0,
    progress: bool = False,
) -> list[FidelityRow]:
    """Measure the study's rows (see the module docstring) for one VAE and one image set.

    Args:
        vae: the base ``AutoencoderKL`` (left unchanged; CAT trains on copies).
        clean: clean images ``[N, 3, H, W]`` in ``[-1, 1]`` on 8-bit levels, on the VAE's device.
        protections: name -> protection callable (e.g. a partial of :func:`target_latent_encoder_attack`).
        eps_255: budget of the noise rows (the protections' budget).
        variants: CAT variants trained on each protection.
        control: also train CAT ``both`` on uniform-noise images and evaluate it on each protection.
        cat_options: keyword options of :func:`~lightning_cat.cat.train_cat_adapter` (rank, steps, ...).
        seed: seed of the noise, the protections and CAT.
        progress: show progress bars.
    """
    cat_options = dict(cat_options or {})
    cat_options.setdefault("seed", seed)
    cat_options.setdefault("progress", progress)
    vae = vae.requires_grad_(False).eval()
    generator = torch.Generator().manual_seed(seed)
    uniform = uniform_noise(clean, eps_255, generator)
    signs = sign_noise(clean, eps_255, generator)

    clean_row = FidelityRow("clean", _measure(vae, clean, clean))
    rows = [
        clean_row,
        FidelityRow(f"uniform noise {eps_255:g}/255", _measure(vae, uniform, clean)),
        FidelityRow(f"random +-{eps_255:g}/255", _measure(vae, signs, clean)),
    ]
    e_clean = clean_row.metrics["recon_mse"]

    def closed(e_prot: float, e_cat: float) -> float:
        return (e_prot - e_cat) / (e_prot - e_clean) if e_prot != e_clean else float("nan")

    control_vae = None
    if control:
        control_vae = train_cat_adapter(copy.deepcopy(vae), uniform, adapter_variant="both", **cat_options)
    for name, protect in protections.items():
        protected = protect(vae, clean, torch.Generator().manual_seed(seed)).detach()
        base_row = FidelityRow(name, _measure(vae, protected, clean))
        rows.append(base_row)
        e_prot = base_row.metrics["recon_mse"]
        for variant in variants:
            adapted = train_cat_adapter(copy.deepcopy(vae), protected, adapter_variant=variant, **cat_options)
            metrics = _measure(adapted, protected, clean, reference=vae)
            rows.append(FidelityRow(f"CAT {variant} on {name}", metrics, closed(e_prot, metrics["recon_mse"])))
        if control_vae is not None:
            metrics = _measure(control_vae, protected, clean, reference=vae)
            rows.append(
                FidelityRow(
                    f"control (CAT both on uniform noise) on {name}", metrics, closed(e_prot, metrics["recon_mse"])
                )
            )
    return rows


def format_fidelity_table(rows: Sequence[FidelityRow]) -> str:
    """A Markdown table of the study: latent distortion, reconstruction error vs clean, gap closed."""
    clean = next((row for row in rows if row.name == "clean"), rows[0]).metrics["recon_mse"]
    header = (
        "| condition | latent MSE rel. (same encoder) | latent MSE rel. vs original clean latents "
        "| recon MSE vs clean | x clean error | recon PSNR vs clean (dB) | gap closed |\n"
        "|---|---:|---:|---:|---:|---:|---:|"
    )
    lines = [header]
    for row in rows:
        m = row.metrics
        gap = "" if row.gap_closed is None else f"{100 * row.gap_closed:.0f}%"
        lines.append(
            f"| {row.name} | {m['latent_mse_relative']:.4f} | {m['latent_mse_vs_reference_relative']:.4f} "
            f"| {m['recon_mse']:.5f} | {m['recon_mse'] / clean:.2f} | {m['recon_psnr']:.2f} | {gap} |"
        )
    return "\n".join(lines)
