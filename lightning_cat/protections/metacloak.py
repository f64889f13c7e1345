"""MetaCloak (Liu et al., CVPR 2024): perturbations robust over surrogate snapshots and transformations.

A pool of ``pool_size`` surrogate snapshots is made by DreamBooth on the clean set, one snapshot
every ``pool_interval`` steps (the first is the pretrained model). Then, for ``rounds`` rounds and
for each snapshot: load it into the (once-allocated) working surrogate and repeat
``cycles_per_snapshot`` times: ``steps`` sign steps ascending the expectation over ``eot_samples``
random transformations ``T`` of ``L_DM(theta; T(x'))``, then ``surrogate_steps`` DreamBooth steps of
the working surrogate on ``x'``. The snapshots wait in weight stashes
(:class:`~lightning_cat.protections.stash.WeightStash`, ``pool_stash``): ``cpu`` by default, so the
device holds one model; ``disk`` when host memory is short too (six fp32 snapshots of SD 2.1's UNet
and text encoder are 27 GiB); ``device``.

The reference's inner adversarial "attacker" is off in its published configuration
(``attack_pgd_radius=0``) and is not implemented.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from lightning_cat.protections.advdm import DIFFUSION_DEFAULTS, PGD_DEFAULTS
from lightning_cat.protections.base import DiffusionDraw, DiffusionObjective
from lightning_cat.protections.stash import WeightStash
from lightning_cat.protections.surrogate import SURROGATE_DEFAULTS, SurrogateProtection
from lightning_cat.protections.transforms import random_transform
from lightning_cat.seeding import image_generators

__all__ = ["MetaCloak", "TransformedDiffusionObjective"]


class TransformedDiffusionObjective(DiffusionObjective):
    """``L_DM(T(x))`` for a random transformation ``T`` drawn per image at each draw."""

    def __init__(self, *args: Any, transforms: list[str], crop_scale: float, blur_kernel_size: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.transforms = list(transforms)
        self.crop_scale = crop_scale
        self.blur_kernel_size = blur_kernel_size

    def draw(self, images, generators) -> tuple[DiffusionDraw, list[torch.Generator]]:
        diffusion = super().draw(images, generators)
        # The transformation parameters come from a generator forked off each image's own.
        forks = [torch.Generator().manual_seed(int(torch.randint(0, 2**62, (), generator=g))) for g in generators]
        return diffusion, forks

    def loss(self, images: torch.Tensor, draw) -> torch.Tensor:
        diffusion, forks = draw
        transformed = random_transform(
            images, forks, self.transforms, crop_scale=self.crop_scale, blur_kernel_size=self.blur_kernel_size
        )
        return super().loss(transformed, diffusion)

    def gradient(self, images, draw):
        # Transformation parameters are consumed from the forks, so each call needs fresh copies.
        diffusion, forks = draw
        states = [fork.get_state() for fork in forks]
        copies = [torch.Generator().set_state(state) for state in states]
        return super().gradient(images, (diffusion, copies))


class MetaCloak(SurrogateProtection):
    """MetaCloak. Defaults: 11/255, alpha 1.1/255, pool of 6 snapshots 200 steps apart, 4 rounds,
    100 cycles of (6 PGD steps, 2 surrogate steps) per snapshot and round, one transformation
    sample (resize/crop, Gaussian blur k=7, random flip) per step."""

    name: ClassVar[str] = "metacloak"
    defaults: ClassVar[dict[str, Any]] = {
        **PGD_DEFAULTS,
        **DIFFUSION_DEFAULTS,
        **SURROGATE_DEFAULTS,
        "eps_255": 11.0,
        "alpha_255": 1.1,
        "steps": 6,
        "rounds": 4,
        "pool_size": 6,
        "pool_interval": 200,
        "cycles_per_snapshot": 100,
        "surrogate_steps": 2,
        "eot_samples": 1,
        # The reference's Resize(512) + CenterCrop(512) is an identity on its 512 px inputs: blur and flip remain.
        "eot_transforms": ["gaussian_blur", "hflip"],
        "crop_scale": 0.875,
        "blur_kernel_size": 7,
        "surrogate_input_range": "unit",
        "pool_stash": "cpu",
    }

    @classmethod
    def total_pgd_steps(cls, options: dict[str, Any]) -> int:
        o = options
        return int(o["steps"]) * int(o["cycles_per_snapshot"]) * int(o["pool_size"]) * int(o["rounds"])

    def _eot_objective(self, surrogate) -> TransformedDiffusionObjective:
        o = self.options
        return TransformedDiffusionObjective(
            self.components.vae,
            surrogate.unet,
            self.components.noise_scheduler,
            surrogate.embeddings(),
            ascend=True,
            timestep_range=o["timestep_range"],
            num_draws=o["num_noise_draws"],
            transforms=o["eot_transforms"],
            crop_scale=o["crop_scale"],
            blur_kernel_size=o["blur_kernel_size"],
        )

    def _surrogate_view(self, images: torch.Tensor) -> torch.Tensor:
        """The instance images as the surrogate's training steps see them: in ``[-1, 1]`` (``unit``), or
        in ``0..255`` as the reference feeds them (``0-255``; its class images stay in ``[-1, 1]``)."""
        return images if self.options["surrogate_input_range"] == "unit" else (images + 1.0) * 127.5

    def _protect(self, clean, keys, seed, data, progress) -> torch.Tensor:
        o = self.options
        theta = self.make_surrogate(seed, "metacloak", copy=not self.in_place)
        self.surrogate = theta
        pool: list[WeightStash] = []
        train_callback = self.surrogate_callback(progress)
        try:
            clean_set = theta.encode(self._surrogate_view(self.surrogate_training_set(clean, data)))
            class_set = theta.encode(data.class_images)

            def snapshot() -> None:
                pool.append(WeightStash(o["pool_stash"]))
                pool[-1].save(theta.modules)

            def keep(step: int, loss: float) -> None:
                train_callback(step, loss)
                if (step + 1) % o["pool_interval"] == 0:
                    snapshot()

            snapshot()

            theta.train(clean_set, class_set, (o["pool_size"] - 1) * o["pool_interval"], on_step=keep)
            generators = image_generators(seed, keys)
            adv = self.pgd.start(clean, generators)
            step = 0
            for _ in range(o["rounds"]):
                for stash in pool:
                    stash.restore(theta.modules)
                    for _ in range(o["cycles_per_snapshot"]):
                        objective = self._eot_objective(theta)
                        with theta.frozen():
                            adv, step = self._eot_steps(adv, clean, objective, generators, step, progress)
                        theta.train(
                            theta.encode(self._surrogate_view(adv)),
                            class_set,
                            o["surrogate_steps"],
                            on_step=train_callback,
                        )
            self.objective = self.make_objective(theta)
            return self.pgd.finalize(adv, clean)
        finally:
            for stash in pool:
                stash.close()
            theta.release()

    def _eot_steps(self, adv, clean, objective, generators, step, progress):
        """``steps`` sign steps on the transformation-averaged gradient; returns ``(adv, next step)``."""
        for _ in range(self.options["steps"]):
            grad = torch.zeros_like(adv)
            losses = []
            for _ in range(self.options["eot_samples"]):
                sample_grad, loss = objective.gradient(adv, objective.draw(adv, generators))
                grad += sample_grad
                losses.append(loss)
            adv = self.pgd.step(adv, clean, grad, ascend=True, step=step)
            step += 1
            progress("pgd", torch.stack(losses).mean(0))
        return adv, step
