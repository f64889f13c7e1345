"""Building blocks shared by every protection: randomness per image, objectives, the method base.

An :class:`Objective` is one loss and a direction: ``loss(images, draw)`` returns one value per
image, ``ascend`` says whether PGD climbs or descends it, and ``gradient`` is autograd of the
loss unless a method defines its own (SDS). All randomness an objective needs at a step (VAE
posterior noise, diffusion noise, timesteps) is a *draw* taken from one generator per image,
so an image's result depends only on ``(seed, key)``, never on its batch or rank; passing the
same draw twice evaluates the loss at fixed timesteps and noise.

A :class:`Protection` is a method: its options with reference defaults, the model parts it
needs, and ``protect(images, keys, seed=...)`` returning images on the 8-bit grid within budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lightning_cat.diffusion import (
    diffusion_loss,
    gradient_checkpointing,
    latent_distribution,
    latent_shape,
    scale_latents,
)
from lightning_cat.protections.options import resolve_options
from lightning_cat.protections.pgd import PGD, warn_odd_budget
from lightning_cat.seeding import image_generators

__all__ = [
    "DiffusionDraw",
    "DiffusionObjective",
    "Objective",
    "ObjectiveProtection",
    "Protection",
    "StepCallback",
    "SurrogateData",
]

#: Called after every step with ``(kind, loss)``; ``kind`` is ``"pgd"`` or ``"surrogate"``.
StepCallback = Callable[[str, float], None]


# ------------------------------------------------------------------------------ draws


@dataclass
class DiffusionDraw:
    """The randomness of one step of a diffusion objective: ``num_draws`` samples per image.

    Shapes: ``latent_noise`` and ``noise`` ``[B, K, C, h, w]``, ``timesteps`` ``[B, K]``.
    """

    latent_noise: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor

    @property
    def num_draws(self) -> int:
        return self.timesteps.shape[1]

    def to(self, device: torch.device | str) -> DiffusionDraw:
        return DiffusionDraw(self.latent_noise.to(device), self.noise.to(device), self.timesteps.to(device))


def draw_diffusion(
    generators: Sequence[torch.Generator],
    shape: tuple[int, int, int],
    *,
    num_train_timesteps: int,
    timestep_range: Sequence[int] | None = None,
    num_draws: int = 1,
) -> DiffusionDraw:
    """Draw posterior noise, diffusion noise and timesteps, image by image from its own generator."""
    low, high = (0, num_train_timesteps) if timestep_range is None else (int(timestep_range[0]), int(timestep_range[1]))
    latent_noise, noise, timesteps = [], [], []
    for generator in generators:
        latent_noise.append(torch.randn((num_draws, *shape), generator=generator))
        noise.append(torch.randn((num_draws, *shape), generator=generator))
        timesteps.append(torch.randint(low, high, (num_draws,), generator=generator))
    return DiffusionDraw(torch.stack(latent_noise), torch.stack(noise), torch.stack(timesteps))


# ------------------------------------------------------------------------------ objectives


class Objective:
    """One loss and a direction; subclasses implement :meth:`loss` (and :meth:`draw` if random)."""

    #: True: PGD climbs the loss; False: it descends it.
    ascend: bool = True

    def draw(self, images: torch.Tensor, generators: Sequence[torch.Generator]) -> Any:
        """The randomness of one step for ``images`` (``None`` for deterministic objectives)."""
        return None

    def loss(self, images: torch.Tensor, draw: Any) -> torch.Tensor:
        """Per-image loss ``[B]`` of ``images`` under ``draw``."""
        raise NotImplementedError

    def gradient(self, images: torch.Tensor, draw: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(d sum(loss) / d images, per-image loss)``; images are independent in the sum."""
        images = images.detach().requires_grad_(True)
        loss = self.loss(images, draw)
        (grad,) = torch.autograd.grad(loss.sum(), images)
        return grad, loss.detach()


class DiffusionObjective(Objective):
    """``L_DM`` of images under a VAE, a UNet and a noise scheduler, for a text condition.

    ``L_DM(x) = mean_k || eps_theta(z_t, t, c) - target ||^2`` with ``z_0`` a posterior sample of
    ``E(x)`` (scaled), averaged over ``num_draws`` (noise, timestep) draws per image. Gradients
    flow through the encoder and the UNet. Subclasses reuse :meth:`latents` and
    :meth:`diffusion_terms`.

    Args:
        vae, unet, noise_scheduler: the model parts.
        embeddings: text-encoder hidden states ``[1, L, D]`` of the prompt (kept up to date by
            methods that train the text encoder).
        ascend: direction.
        timestep_range: ``(low, high)``; timesteps are uniform on ``[low, high)`` (default all).
        num_draws: noise draws per image and step.
    """

    def __init__(
        self,
        vae,
        unet,
        noise_scheduler,
        embeddings: torch.Tensor,
        *,
        ascend: bool = True,
        timestep_range: Sequence[int] | None = None,
        num_draws: int = 1,
    ) -> None:
        self.vae = vae
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.embeddings = embeddings
        self.ascend = ascend
        self.timestep_range = None if timestep_range is None else tuple(int(v) for v in timestep_range)
        self.num_draws = int(num_draws)
        num_train = noise_scheduler.config.num_train_timesteps
        if self.timestep_range is not None and not 0 <= self.timestep_range[0] < self.timestep_range[1] <= num_train:
            raise ValueError(f"timestep_range must satisfy 0 <= low < high <= {num_train}, got {timestep_range}")

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def draw(self, images: torch.Tensor, generators: Sequence[torch.Generator]) -> DiffusionDraw:
        if len(generators) != images.shape[0]:
            raise ValueError(f"{type(self).__name__}: {images.shape[0]} images but {len(generators)} generators")
        return draw_diffusion(
            generators,
            latent_shape(self.vae, images.shape),
            num_train_timesteps=self.noise_scheduler.config.num_train_timesteps,
            timestep_range=self.timestep_range,
            num_draws=self.num_draws,
        )

    def latents(self, images: torch.Tensor, draw: DiffusionDraw) -> torch.Tensor:
        """Scaled posterior samples ``[B * K, C, h, w]`` (image-major), differentiable in ``images``."""
        dist = latent_distribution(self.vae, images)
        latent_noise = draw.latent_noise.to(dist.mean.device, dist.mean.dtype)
        samples = dist.mean.unsqueeze(1) + dist.std.unsqueeze(1) * latent_noise
        return scale_latents(self.vae, samples.flatten(0, 1))

    def diffusion_terms(
        self, latents: torch.Tensor, draw: DiffusionDraw
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(noise, timesteps, condition)`` flattened to ``B * K`` rows, on the latents' device."""
        noise = draw.noise.flatten(0, 1).to(latents.device, latents.dtype)
        timesteps = draw.timesteps.flatten().to(latents.device)
        condition = self.embeddings.to(latents.device).expand(latents.shape[0], -1, -1)
        return noise, timesteps, condition

    def diffusion_loss(self, latents: torch.Tensor, draw: DiffusionDraw) -> torch.Tensor:
        """Per-image ``L_DM`` ``[B]`` of flattened latents (mean over the ``K`` draws)."""
        noise, timesteps, condition = self.diffusion_terms(latents, draw)
        per_row = diffusion_loss(self.unet, self.noise_scheduler, latents, condition, noise=noise, timesteps=timesteps)
        return per_row.view(-1, draw.num_draws).mean(dim=1)

    def loss(self, images: torch.Tensor, draw: DiffusionDraw) -> torch.Tensor:
        return self.diffusion_loss(self.latents(images, draw), draw)


# ------------------------------------------------------------------------------ methods


@dataclass
class SurrogateData:
    """The image sets a surrogate-training method uses beside the images it protects.

    Attributes:
        class_images: class-prior images for prior preservation (``None``: no prior preservation).
        clean_images: a separate clean set of the subject the surrogate trains on (Anti-DreamBooth's
            set_A; ``None``: the surrogate trains on the images being protected).
    """

    class_images: torch.Tensor | None = None
    clean_images: torch.Tensor | None = None


def _on(images: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if images is None else images.detach().to(device, torch.float32)


class _Progress:
    """A tqdm bar over PGD steps plus an optional per-step callback."""

    def __init__(self, total: int, desc: str, enabled: bool, callback: StepCallback | None) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)
        self.callback = callback

    def __call__(self, kind: str, loss: torch.Tensor | float) -> None:
        value = float(loss.float().mean()) if isinstance(loss, torch.Tensor) else float(loss)
        if kind == "pgd":
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{value:.4g}", refresh=False)
        if self.callback is not None:
            self.callback(kind, value)

    def close(self) -> None:
        self.bar.close()


class Protection:
    """A protection method: options with reference defaults, needed parts, and :meth:`protect`.

    Subclasses set :attr:`name`, :attr:`parts`, :attr:`defaults` (every option the method takes,
    PGD ones included, at the reference values) and implement :meth:`_protect`.

    Args:
        components: a ``DiffusionComponents`` holding at least :attr:`parts`.
        in_place: methods that train a surrogate may train the components' own UNet / text
            encoder instead of a copy (saves one model copy; the caller's weights change).
        show_progress: show a progress bar over PGD steps.
        **options: method options (see :attr:`defaults`); unknown or illegal ones raise.
    """

    name: ClassVar[str] = ""
    #: True when images are coupled (a surrogate trained over the whole set): the set is one group.
    coupled: ClassVar[bool] = False
    #: The ``DiffusionComponents`` parts the method uses.
    parts: ClassVar[tuple[str, ...]] = ("tokenizer", "text_encoder", "vae", "unet", "noise_scheduler")
    #: Parts a coupled method trains (kept in fp32 under mixed precision).
    trained_parts: ClassVar[tuple[str, ...]] = ()
    #: Every option and its reference default.
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, components, *, in_place: bool = False, show_progress: bool = True, **options: Any) -> None:
        self.options = self.resolve(**options)
        missing = [part for part in self.parts if getattr(components, part, None) is None]
        if missing:
            raise ValueError(f"{self.name}: components lack {missing} (needs {list(self.parts)})")
        self.components = components
        self.in_place = in_place
        self.show_progress = show_progress
        self.pgd = PGD(
            eps_255=self.options["eps_255"],
            alpha_255=self.options["alpha_255"],
            steps=self.total_pgd_steps(self.options),
            norm=self.options["norm"],
            random_start=self.options["random_start"],
            step_schedule=self.options["step_schedule"],
            final_step_fraction=self.options["final_step_fraction"],
        )

    @classmethod
    def resolve(cls, **options: Any) -> dict[str, Any]:
        """The method's complete options: ``defaults`` updated with ``options`` (``None`` = default).

        Raises:
            ValueError: for an option the method does not take, or an illegal value.

        Warns:
            UserWarning: for a legal but odd step size (``alpha_255`` above ``eps_255``, or all
                steps together shorter than ``eps_255``).
        """
        resolved = resolve_options(cls.name, cls.defaults, options)
        o = resolved
        steps = cls.total_pgd_steps(o)
        owner = f"protection method {cls.name!r}"
        warn_odd_budget(o["eps_255"], o["alpha_255"], steps, o["step_schedule"], o["final_step_fraction"], owner=owner)
        return resolved

    @classmethod
    def total_pgd_steps(cls, options: dict[str, Any]) -> int:
        """Number of PGD steps a run makes (the span of the step-size schedule)."""
        return int(options["steps"])

    @property
    def device(self) -> torch.device:
        module = self.components.unet if self.components.unet is not None else self.components.vae
        return next(module.parameters()).device

    def text_embeddings(self, prompt: str) -> torch.Tensor:
        """Hidden states ``[1, L, D]`` of ``prompt`` under the (frozen) text encoder."""
        from lightning_cat.diffusion import encode_prompts

        with torch.no_grad():
            return encode_prompts(self.components.tokenizer, self.components.text_encoder, [prompt]).detach()

    def params(self) -> dict[str, Any]:
        """All options of the run, JSON-ready, for manifests."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in self.options.items()}

    def protect(
        self,
        images: torch.Tensor,
        keys: Sequence[str],
        *,
        seed: int = 0,
        class_images: torch.Tensor | None = None,
        surrogate_images: torch.Tensor | None = None,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """Protect ``images`` ``[B, 3, H, W]`` in ``[-1, 1]`` whose names (file stems) are ``keys``.

        Returns images on the 8-bit grid, within budget of the 8-bit-rounded inputs, on the
        images' device. Per-image methods draw each image's randomness from ``(seed, key)``;
        coupled methods treat the images as one set (in key order), use ``class_images``
        (class-prior images) for prior preservation when given, and train their surrogate on
        ``surrogate_images`` (a separate clean set of the same subject, Anti-DreamBooth's set_A)
        when given, else on the images they protect.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: images must be [B, 3, H, W], got {tuple(images.shape)}")
        keys = [str(key) for key in keys]
        if len(keys) != images.shape[0]:
            raise ValueError(f"{self.name}: {images.shape[0]} images but {len(keys)} keys")
        if len(set(keys)) != len(keys):
            raise ValueError(f"{self.name}: keys must be unique, got {keys}")
        if (class_images is not None or surrogate_images is not None) and not self.coupled:
            raise ValueError(f"{self.name}: class_images and surrogate_images are for methods that train a surrogate")
        clean = images.detach().to(self.device, torch.float32)
        progress = _Progress(self.pgd.steps, self.name, self.show_progress, callback)
        # Checkpointing (an option) covers the PGD steps and the surrogate's training steps.
        models = {"vae": getattr(self.components, "vae", None), "unet": getattr(self.components, "unet", None)}
        try:
            with gradient_checkpointing(models, enabled=self.options.get("gradient_checkpointing", False)):
                if self.coupled:
                    order = sorted(range(len(keys)), key=keys.__getitem__)
                    inverse = sorted(range(len(keys)), key=order.__getitem__)
                    extra = SurrogateData(_on(class_images, self.device), _on(surrogate_images, self.device))
                    result = self._protect(clean[order], [keys[i] for i in order], seed, extra, progress)[inverse]
                else:
                    result = self._protect(clean, keys, seed, None, progress)
        finally:
            progress.close()
        return result.to(images.device)

    def _protect(
        self,
        clean: torch.Tensor,
        keys: list[str],
        seed: int,
        data: SurrogateData | None,
        progress: Callable[[str, Any], None],
    ) -> torch.Tensor:
        """Protect ``clean`` (coupled methods: sorted by key, with ``data``; others: ``data`` is None)."""
        raise NotImplementedError


class ObjectiveProtection(Protection):
    """A per-image method: plain PGD on one :class:`Objective` (built once, by :meth:`build_objective`)."""

    def __init__(self, components, **kwargs: Any) -> None:
        super().__init__(components, **kwargs)
        self._objective: Objective | None = None

    @property
    def objective(self) -> Objective:
        if self._objective is None:
            self._objective = self.build_objective()
        return self._objective

    def build_objective(self) -> Objective:
        raise NotImplementedError

    def diffusion_objective_args(self) -> dict[str, Any]:
        """The arguments every :class:`DiffusionObjective` takes, from the components and options."""
        c = self.components
        return {
            "vae": c.vae,
            "unet": c.unet,
            "noise_scheduler": c.noise_scheduler,
            "embeddings": self.text_embeddings(self.options["prompt"]),
            "timestep_range": self.options["timestep_range"],
            "num_draws": self.options["num_noise_draws"],
        }

    def _protect(self, clean, keys, seed, data, progress) -> torch.Tensor:
        generators = image_generators(seed, keys)
        return self.pgd.run(clean, self.objective, generators, on_step=lambda loss: progress("pgd", loss))
