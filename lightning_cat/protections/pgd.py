"""The shared projected-gradient driver of every protection.

Budgets and step sizes are given in ``/255`` pixel units (what papers quote) and converted once
to model units (images in ``[-1, 1]``): ``eps = 2 * eps_255 / 255``. Steps are L_inf sign steps
(or normalised L2 steps), followed by a projection onto the budget ball and ``[-1, 1]``.

The last step is :meth:`PGD.finalize`: it rounds to the 8-bit grid a PNG stores and projects
again in integers, so the SAVED image satisfies the budget against the 8-bit clean image (an
L_inf budget of ``r/255`` allows integer differences up to ``floor(r)``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import torch

from lightning_cat.options import choices
from lightning_cat.pixels import from_levels, to_levels, to_model_units

if TYPE_CHECKING:
    from lightning_cat.protections.base import Objective

__all__ = [
    "NORMS",
    "PGD",
    "STEP_SCHEDULES",
    "Norm",
    "StepSchedule",
    "quantize_within_budget",
    "to_model_units",
    "warn_odd_budget",
]

#: ``linf`` sign steps or ``l2`` steps along the normalised gradient.
Norm = Literal["linf", "l2"]
NORMS = choices(Norm)
#: ``constant`` step size, or ``linear`` decay to ``alpha * final_step_fraction`` (PhotoGuard).
StepSchedule = Literal["constant", "linear"]
STEP_SCHEDULES = choices(StepSchedule)


def _per_image_norm(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.flatten(1).norm(dim=1).view(-1, *([1] * (tensor.ndim - 1)))


class PGD:
    """Projected gradient steps on images within an L_inf or L2 ball around the clean images.

    Example::

        pgd = PGD(eps_255=16, alpha_255=1, steps=100)
        adv = pgd.start(clean, generators)
        for step in range(pgd.steps):
            grad, _ = objective.gradient(adv, objective.draw(adv, generators))
            adv = pgd.step(adv, clean, grad, ascend=objective.ascend, step=step)
        protected = pgd.finalize(adv, clean)  # on the 8-bit grid, within budget

    Args:
        eps_255: budget in ``/255`` pixel units, in ``(0, 255]`` (the L2 budget is the norm of the
            perturbation in the same units).
        alpha_255: step size in ``/255`` pixel units (``> 0``).
        steps: number of steps the step-size schedule spans (``>= 1``).
        norm: ``linf`` (sign steps) or ``l2`` (steps along the normalised gradient).
        random_start: start from a uniform random point of the ball instead of the clean image.
        step_schedule: ``constant``, or ``linear`` decay from ``alpha`` to
            ``alpha * final_step_fraction`` over ``steps`` (PhotoGuard).
        final_step_fraction: see ``step_schedule``.

    Raises:
        ValueError: for an illegal option, naming it and the allowed values.
    """

    def __init__(
        self,
        eps_255: float,
        alpha_255: float,
        steps: int,
        norm: Norm = "linf",
        random_start: bool = False,
        step_schedule: StepSchedule = "constant",
        final_step_fraction: float = 0.01,
    ) -> None:
        check_budget(eps_255, alpha_255, steps, owner="PGD")
        if norm not in NORMS:
            raise ValueError(f"PGD: norm={norm!r} is not one of {list(NORMS)}")
        if step_schedule not in STEP_SCHEDULES:
            raise ValueError(f"PGD: step_schedule={step_schedule!r} is not one of {list(STEP_SCHEDULES)}")
        if not 0.0 <= final_step_fraction <= 1.0:
            raise ValueError(f"PGD: final_step_fraction must be in [0, 1], got {final_step_fraction}")
        self.eps_255 = float(eps_255)
        self.alpha_255 = float(alpha_255)
        self.steps = int(steps)
        self.norm = norm
        self.random_start = bool(random_start)
        self.step_schedule = step_schedule
        self.final_step_fraction = float(final_step_fraction)
        self.eps = to_model_units(eps_255)
        self.alpha = to_model_units(alpha_255)

    def step_size(self, step: int) -> float:
        """Step size (model units) of step ``step`` (0-based) under the schedule."""
        if self.step_schedule == "constant":
            return self.alpha
        final = self.alpha * self.final_step_fraction
        return self.alpha - (self.alpha - final) * min(step, self.steps) / self.steps

    # ------------------------------------------------------------------ ball

    def project(self, adv: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """Project onto the budget ball around ``clean`` and onto ``[-1, 1]``."""
        delta = adv - clean
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = _per_image_norm(delta)
            delta = delta * torch.clamp(self.eps / norms.clamp_min(1e-12), max=1.0)
        return (clean + delta).clamp(-1.0, 1.0)

    def start(self, clean: torch.Tensor, generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """The starting point: ``clean``, or a random point of the ball (one generator per image)."""
        clean = clean.detach()
        if not self.random_start:
            return clean.clone()
        if generators is None or len(generators) != clean.shape[0]:
            raise ValueError("PGD.start: random_start needs one generator per image")
        shape = clean.shape[1:]
        if self.norm == "linf":
            noise = torch.stack([torch.rand(shape, generator=g) * 2 - 1 for g in generators]) * self.eps
        else:
            directions = torch.stack([torch.randn(shape, generator=g) for g in generators])
            radii = torch.stack([torch.rand((), generator=g) for g in generators]).view(-1, 1, 1, 1)
            noise = directions / _per_image_norm(directions).clamp_min(1e-12) * radii * self.eps
        return self.project(clean + noise.to(clean.device, clean.dtype), clean)

    def step(
        self, adv: torch.Tensor, clean: torch.Tensor, grad: torch.Tensor, *, ascend: bool, step: int = 0
    ) -> torch.Tensor:
        """One step along ``grad`` (up when ``ascend``), then the projection.

        Raises:
            FloatingPointError: if ``grad`` holds a NaN or infinity (a sign step would spread it).
        """
        if not bool(torch.isfinite(grad).all()):
            raise FloatingPointError(
                f"PGD: the objective's gradient is not finite at step {step} (under half precision try 32-true)"
            )
        size = self.step_size(step)
        sign = 1.0 if ascend else -1.0
        if self.norm == "linf":
            direction = grad.sign()
        else:
            direction = grad / _per_image_norm(grad).clamp_min(1e-12)
        return self.project(adv.detach() + sign * size * direction.to(adv.dtype), clean).detach()

    # ------------------------------------------------------------------ 8-bit

    def finalize(self, adv: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """:func:`quantize_within_budget` with this driver's budget and norm."""
        return quantize_within_budget(adv, clean, self.eps_255, self.norm)

    def run(
        self,
        clean: torch.Tensor,
        objective: Objective,
        generators: Sequence[torch.Generator],
        on_step: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Run all ``steps`` on ``objective`` from :meth:`start` and return :meth:`finalize`'s result.

        ``on_step`` receives each step's per-image loss (for progress and logging).
        """
        adv = self.start(clean, generators)
        for step in range(self.steps):
            draw = objective.draw(adv, generators)
            grad, loss = objective.gradient(adv, draw)
            adv = self.step(adv, clean, grad, ascend=objective.ascend, step=step)
            if on_step is not None:
                on_step(loss.detach())
        return self.finalize(adv, clean)

    def params(self) -> dict[str, object]:
        """The driver's options, for manifests."""
        return {
            "eps_255": self.eps_255,
            "alpha_255": self.alpha_255,
            "steps": self.steps,
            "norm": self.norm,
            "random_start": self.random_start,
            "step_schedule": self.step_schedule,
            "final_step_fraction": self.final_step_fraction,
        }


def quantize_within_budget(adv: torch.Tensor, clean: torch.Tensor, eps_255: float, norm: Norm = "linf") -> torch.Tensor:
    """Round ``adv`` to the 8-bit grid and project it in integers so the saved PNG is within budget.

    The reference is ``clean`` rounded to 8 bits (what the clean PNG stores); an L_inf budget of
    ``r/255`` allows integer differences up to ``floor(r)``. Returns floats in ``[-1, 1]`` (in
    ``adv``'s dtype) that :func:`lightning_cat.pixels.to_uint8` maps exactly to the projected levels.
    """
    clean8 = to_levels(clean)
    delta = to_levels(adv) - clean8
    if norm == "linf":
        bound = math.floor(eps_255 + 1e-6)
        delta = delta.clamp(-bound, bound)
    else:
        norms = _per_image_norm(delta)
        scale = torch.clamp(eps_255 / norms.clamp_min(1e-12), max=1.0)
        delta = torch.trunc(delta * scale)  # towards zero: each |entry| shrinks, so the norm does too
    return from_levels((clean8 + delta).clamp(0, 255), adv.dtype)


def check_budget(eps_255: float, alpha_255: float, steps: int, *, owner: str) -> None:
    """Raise ``ValueError`` (naming ``owner`` and the option) for an illegal budget, step size or step count."""
    if isinstance(eps_255, bool) or not isinstance(eps_255, int | float) or not 0 < eps_255 <= 255:
        raise ValueError(f"{owner}: eps_255 must be a number in (0, 255] (pixel units /255), got {eps_255!r}")
    if isinstance(alpha_255, bool) or not isinstance(alpha_255, int | float) or not alpha_255 > 0:
        raise ValueError(f"{owner}: alpha_255 must be a number > 0 (pixel units /255), got {alpha_255!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{owner}: steps must be an integer >= 1, got {steps!r}")


def warn_odd_budget(
    eps_255: float, alpha_255: float, steps: int, step_schedule: str, final_step_fraction: float, *, owner: str
) -> None:
    """Warn (naming ``owner`` and the option) about a legal but odd step size for the budget: a step
    larger than the budget, or steps too few to reach the budget's edge from the clean image."""
    if alpha_255 > eps_255:
        warnings.warn(
            f"{owner}: alpha_255={alpha_255} is larger than eps_255={eps_255}: every PGD step overshoots "
            "the budget and is projected back, so the attack acts like a sign-only step at the budget's "
            "edge; the references use alpha_255 well below eps_255",
            UserWarning,
            stacklevel=3,
        )
    if step_schedule == "linear":
        travel = steps * alpha_255 - alpha_255 * (1 - final_step_fraction) * (steps - 1) / 2
    else:
        travel = steps * alpha_255
    if travel < eps_255:
        warnings.warn(
            f"{owner}: steps x alpha_255 = {steps} x {alpha_255} (total step length {travel:g}) is below "
            f"eps_255={eps_255}: PGD cannot reach the budget's edge from the clean image, so the "
            "budget is not used up; raise steps or alpha_255",
            UserWarning,
            stacklevel=3,
        )
