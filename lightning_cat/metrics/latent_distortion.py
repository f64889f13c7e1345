"""Latent distortion and reconstruction error of protected images under a VAE (CAT's analysis).

For clean images ``x``, protected images ``x_a`` and a VAE ``(E*, D*)`` (the base VAE or a
CAT-adapted one), with ``mu`` the posterior mean::

    latent_mse              mean (mu(E*(x_a)) - mu(E*(x)))^2          same encoder
    latent_mse_relative     latent_mse / mean mu(E*(x))^2              adapted encoders may rescale
    latent_mse_vs_reference mean (mu(E*(x_a)) - mu(E(x)))^2            E = reference (original) encoder
    latent_mse_vs_reference_relative  ... / mean mu(E(x))^2
    recon_mse_self          mean (D*(E*(x_a)) - x_a)^2                 reconstruction of the protected image
    recon_mse               mean (D*(E*(x_a)) - x)^2                   ... measured against the clean image
    clean_recon_mse         mean (D*(E*(x)) - x)^2
    recon_gap               recon_mse - clean_recon_mse                what the protection costs
    recon_psnr_self, recon_psnr, clean_recon_psnr   mean per-image PSNR (dB, images in [-1, 1])

Reconstructions decode the posterior mean and are clamped to ``[-1, 1]``. Every state is a sum
reduced with ``dist_reduce_fx="sum"``, so the metric is exact under DDP. Without a
``reference_vae`` the ``*_vs_reference*`` values are against the evaluated VAE itself. With
``keys``, only those values are computed and only the passes they need run: the decoder is the
most expensive pass (at 512 px it is most of the metric's time), and ``[latent_mse_relative,
recon_psnr]`` needs one decode per pair instead of two.

Example::

    metric = LatentDistortion(load_cat_vae("tiny", "adapter/"), reference_vae=load_vae("tiny"))
    metric.update(protected, clean)          # [B, 3, H, W] in [-1, 1]
    metric.compute()["latent_mse_relative"]
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

__all__ = ["LatentDistortion"]

_SUMS = (
    "latent_se",
    "latent_clean_sq",
    "latent_se_reference",
    "latent_reference_sq",
    "recon_se_self",
    "recon_se",
    "clean_recon_se",
    "recon_psnr_self",
    "recon_psnr",
    "clean_recon_psnr",
)


#: The VAE passes each value needs beyond encoding the protected images (always done): "clean" = encode
#: the clean images, "reference" = encode them with the reference VAE, "decode" = decode the protected
#: latents, "clean_decode" = decode the clean latents.
_PASSES: dict[str, frozenset[str]] = {
    "latent_mse": frozenset({"clean"}),
    "latent_mse_relative": frozenset({"clean"}),
    "latent_mse_vs_reference": frozenset({"clean", "reference"}),
    "latent_mse_vs_reference_relative": frozenset({"clean", "reference"}),
    "recon_mse_self": frozenset({"decode"}),
    "recon_mse": frozenset({"decode"}),
    "clean_recon_mse": frozenset({"clean", "clean_decode"}),
    "recon_gap": frozenset({"clean", "decode", "clean_decode"}),
    "recon_psnr_self": frozenset({"decode"}),
    "recon_psnr": frozenset({"decode"}),
    "clean_recon_psnr": frozenset({"clean", "clean_decode"}),
}


def check_latent_distortion_keys(keys, owner: str = "LatentDistortion") -> list[str]:
    """``keys`` as a list (``None``: every value), or a ``ValueError`` naming the unknown ones and the allowed."""
    if keys is None:
        return list(_PASSES)
    if isinstance(keys, str):
        keys = [keys]
    unknown = sorted(set(keys) - set(_PASSES))
    if unknown:
        raise ValueError(f"{owner}: unknown keys {unknown}; choose from {list(_PASSES)}")
    if not keys:
        raise ValueError(f"{owner}: keys is empty; choose from {list(_PASSES)}, or None for all")
    return list(keys)


def _psnr(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in ``[-1, 1]`` (data range 2), ``[B]``."""
    mse = (images - target).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(4.0 / mse.clamp_min(1e-12))


class LatentDistortion(Metric):
    """CAT's latent distortion and reconstruction errors of protected vs clean images.

    Args:
        vae: the VAE evaluated (an ``AutoencoderKL``, merged CAT VAE or ``PeftModel``); kept
            frozen and in eval mode.
        reference_vae: the original VAE whose clean latents the pretrained UNet expects (``None``:
            ``vae`` itself).
        keys: the values to compute (``None``: all of :attr:`KEYS`); passes no value needs are skipped.

    Raises:
        TypeError: if ``vae`` or ``reference_vae`` has no ``encode``/``decode``.
        ValueError: for an unknown key (naming the allowed ones).
    """

    #: Every value :meth:`compute` can return (it returns those of ``keys``).
    KEYS: tuple[str, ...] = tuple(_PASSES)

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        vae: torch.nn.Module,
        reference_vae: torch.nn.Module | None = None,
        keys: list[str] | None = None,
        **kwargs,
    ) -> None:
        self.keys = check_latent_distortion_keys(keys)
        self.passes = frozenset().union(*(_PASSES[key] for key in self.keys))
        super().__init__(**kwargs)
        for name, model in (("vae", vae), ("reference_vae", reference_vae)):
            if model is not None and not (hasattr(model, "encode") and hasattr(model, "decode")):
                raise TypeError(
                    f"LatentDistortion: {name} must be a VAE with encode/decode, got {type(model).__name__}"
                )
        self.vae = vae.requires_grad_(False).eval()
        self.reference_vae = reference_vae.requires_grad_(False).eval() if reference_vae is not None else None
        for name in _SUMS:
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("latent_elements", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pixel_elements", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_images", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    @staticmethod
    def _encode(vae, images: torch.Tensor) -> torch.Tensor:
        dtype = next(vae.parameters()).dtype
        return vae.encode(images.to(dtype)).latent_dist.mean.double()

    @staticmethod
    def _decode(vae, latents: torch.Tensor) -> torch.Tensor:
        dtype = next(vae.parameters()).dtype
        return vae.decode(latents.to(dtype)).sample.double().clamp(-1.0, 1.0)

    @torch.no_grad()
    def update(self, protected: torch.Tensor, clean: torch.Tensor) -> None:
        """Add a batch of protected images and their clean originals, ``[B, 3, H, W]`` in ``[-1, 1]``.

        Raises:
            ValueError: if the two batches differ in shape or are not ``[B, 3, H, W]``.
        """
        if protected.shape != clean.shape or protected.ndim != 4:
            raise ValueError(
                f"LatentDistortion.update: protected and clean must be [B, 3, H, W] of one shape, got "
                f"{tuple(protected.shape)} and {tuple(clean.shape)}"
            )
        passes = self.passes
        protected_latents = self._encode(self.vae, protected)
        self.latent_elements += protected_latents.numel()
        self.pixel_elements += protected.numel()
        self.num_images += protected.shape[0]
        protected64, clean64 = protected.double(), clean.double()
        if "clean" in passes:
            clean_latents = self._encode(self.vae, clean)
            self.latent_se += (protected_latents - clean_latents).pow(2).sum()
            self.latent_clean_sq += clean_latents.pow(2).sum()
            if "reference" in passes:
                reference = clean_latents if self.reference_vae is None else self._encode(self.reference_vae, clean)
                self.latent_se_reference += (protected_latents - reference).pow(2).sum()
                self.latent_reference_sq += reference.pow(2).sum()
            if "clean_decode" in passes:
                clean_reconstruction = self._decode(self.vae, clean_latents)
                self.clean_recon_se += (clean_reconstruction - clean64).pow(2).sum()
                self.clean_recon_psnr += _psnr(clean_reconstruction, clean64).sum()
        if "decode" in passes:
            reconstruction = self._decode(self.vae, protected_latents)
            self.recon_se_self += (reconstruction - protected64).pow(2).sum()
            self.recon_se += (reconstruction - clean64).pow(2).sum()
            self.recon_psnr_self += _psnr(reconstruction, protected64).sum()
            self.recon_psnr += _psnr(reconstruction, clean64).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        """The values of ``keys`` listed in the module docstring (float32 scalars; NaN without pairs)."""
        latent_mse = self.latent_se / self.latent_elements
        latent_mse_reference = self.latent_se_reference / self.latent_elements
        recon_mse = self.recon_se / self.pixel_elements
        clean_recon_mse = self.clean_recon_se / self.pixel_elements
        values = {
            "latent_mse": latent_mse,
            "latent_mse_relative": self.latent_se / self.latent_clean_sq,
            "latent_mse_vs_reference": latent_mse_reference,
            "latent_mse_vs_reference_relative": self.latent_se_reference / self.latent_reference_sq,
            "recon_mse_self": self.recon_se_self / self.pixel_elements,
            "recon_mse": recon_mse,
            "clean_recon_mse": clean_recon_mse,
            "recon_gap": recon_mse - clean_recon_mse,
            "recon_psnr_self": self.recon_psnr_self / self.num_images,
            "recon_psnr": self.recon_psnr / self.num_images,
            "clean_recon_psnr": self.clean_recon_psnr / self.num_images,
        }
        return {name: values[name].float() for name in self.keys}
