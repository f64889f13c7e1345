"""Anti-DreamBooth (Van Le et al., ICCV 2023): FSMG and ASPL.

FSMG fine-tunes a surrogate with DreamBooth on the clean set first, then ascends
``L_DM(theta_clean; x', instance prompt)``. ASPL alternates, for ``iterations`` rounds:
``theta' <- theta``; ``surrogate_steps`` DreamBooth steps of ``theta'`` on the clean set;
``steps`` sign steps ascending ``L_DM(theta'; x')``; ``surrogate_steps`` DreamBooth steps of
``theta`` on the current ``x'``. ``theta'`` trains in theta's own modules while theta's weights
wait in a :class:`~lightning_cat.protections.stash.WeightStash` (``theta_stash``: ``cpu`` by
default, ``disk``, or ``device``); the reference deep-copies UNet and text encoder every round
and every training phase. The surrogate's optimizer states can wait off the device between its
steps too (``optimizer_state_stash``, :class:`~lightning_cat.protections.stash.OptimizerStateStash`).

Both use class-prior images (``class_images``) for prior preservation when given. Choices where
the reference is loose: instance rows for surrogate steps continue through the set across
training phases (the reference restarts at the first image each phase, so with 3 steps and more
than 3 images the later images are never trained on); a fresh AdamW per training phase, as in
the reference.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from lightning_cat.protections.advdm import DIFFUSION_DEFAULTS, PGD_DEFAULTS
from lightning_cat.protections.stash import WeightStash
from lightning_cat.protections.surrogate import SURROGATE_DEFAULTS, SurrogateProtection
from lightning_cat.seeding import image_generators

__all__ = ["ASPL", "ANTI_DREAMBOOTH_PGD", "FSMG"]

#: Anti-DreamBooth's budget: 0.05 model units (6.375/255), alpha 0.005 (0.6375/255).
ANTI_DREAMBOOTH_PGD: dict[str, Any] = {**PGD_DEFAULTS, "eps_255": 6.375, "alpha_255": 0.6375}


class FSMG(SurrogateProtection):
    """FSMG: DreamBooth on the clean set (``surrogate_pretrain_steps``, lr 5e-7), then ``steps`` PGD steps."""

    name: ClassVar[str] = "fsmg"
    trains_on_clean_set: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {
        **ANTI_DREAMBOOTH_PGD,
        **DIFFUSION_DEFAULTS,
        **SURROGATE_DEFAULTS,
        "steps": 100,
        "surrogate_pretrain_steps": 1000,
        "surrogate_batch_size": 2,  # attack_with_fsmg.sh: --train_batch_size=2
    }

    def _protect(self, clean, keys, seed, data, progress) -> torch.Tensor:
        theta = self.make_surrogate(seed, "fsmg", copy=not self.in_place)
        self.surrogate = theta
        try:
            class_set = theta.encode(data.class_images)
            theta.train(
                theta.encode(self.surrogate_training_set(clean, data)),
                class_set,
                self.options["surrogate_pretrain_steps"],
                on_step=self.surrogate_callback(progress),
            )
            self.objective = self.make_objective(theta)
            generators = image_generators(seed, keys)
            adv = self.pgd.start(clean, generators)
            with theta.frozen():
                adv = self.pgd_steps(adv, clean, self.objective, generators, self.options["steps"], 0, progress)
            return self.pgd.finalize(adv, clean)
        finally:
            theta.release()


class ASPL(SurrogateProtection):
    """ASPL: ``iterations`` x (refresh theta', train theta' on clean, ``steps`` PGD, train theta on x')."""

    name: ClassVar[str] = "aspl"
    trains_on_clean_set: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {
        **ANTI_DREAMBOOTH_PGD,
        **DIFFUSION_DEFAULTS,
        **SURROGATE_DEFAULTS,
        "steps": 6,
        "iterations": 50,
        "surrogate_steps": 3,
        "theta_stash": "cpu",
    }

    @classmethod
    def total_pgd_steps(cls, options: dict[str, Any]) -> int:
        return int(options["steps"]) * int(options["iterations"])

    def _protect(self, clean, keys, seed, data, progress) -> torch.Tensor:
        options = self.options
        theta = self.make_surrogate(seed, "aspl-theta", copy=not self.in_place)
        # theta' trains in theta's own modules (its own generator and row cursors); theta's
        # weights wait in the stash meanwhile, so the device never holds two models.
        theta_prime = theta.clone(
            generator=torch.Generator().manual_seed(theta.generator.initial_seed() ^ 1), share=True
        )
        self.surrogate = theta_prime
        stash = WeightStash(options["theta_stash"])
        try:
            clean_set = theta.encode(self.surrogate_training_set(clean, data))
            class_set = theta.encode(data.class_images)
            generators = image_generators(seed, keys)
            train_callback = self.surrogate_callback(progress)
            adv = self.pgd.start(clean, generators)
            for iteration in range(options["iterations"]):
                stash.save(theta.modules)
                theta_prime.train(clean_set, class_set, options["surrogate_steps"], on_step=train_callback)
                self.objective = self.make_objective(theta_prime)
                with theta_prime.frozen():
                    adv = self.pgd_steps(
                        adv, clean, self.objective, generators, options["steps"], iteration * options["steps"], progress
                    )
                stash.restore(theta.modules)
                theta.train(theta.encode(adv), class_set, options["surrogate_steps"], on_step=train_callback)
            return self.pgd.finalize(adv, clean)
        finally:
            stash.close()
            theta.release()
