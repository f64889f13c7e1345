"""The shared PGD driver: budgets in /255 units, projection, 8-bit-aware finalisation."""

from __future__ import annotations

import pytest
import torch

from lightning_cat.images import save_png
from lightning_cat.imageset import measure_saved_image
from lightning_cat.protections import PGD, to_model_units
from lightning_cat.seeding import image_generators


def _grid_images(batch: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, size, size), generator=torch.Generator().manual_seed(0)).float() / 127.5 - 1


def test_budget_converted_once():
    pgd = PGD(eps_255=16, alpha_255=1, steps=10)
    assert pgd.eps == pytest.approx(2 * 16 / 255) == to_model_units(16)
    assert pgd.alpha == pytest.approx(2 / 255)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eps_255": 0}, "eps_255"),
        ({"eps_255": -1}, "eps_255"),
        ({"eps_255": 256}, "eps_255"),
        ({"alpha_255": 0}, "alpha_255"),
        ({"steps": 0}, "steps"),
        ({"steps": 1.5}, "steps"),
        ({"norm": "l1"}, "norm"),
        ({"step_schedule": "cosine"}, "step_schedule"),
    ],
)
def test_illegal_options_name_the_option(kwargs, match):
    options = {"eps_255": 8, "alpha_255": 1, "steps": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        PGD(**options)


def test_linf_projection_and_random_start_stay_in_the_ball():
    clean = _grid_images()
    pgd = PGD(eps_255=8, alpha_255=3, steps=5, random_start=True)
    adv = pgd.start(clean, image_generators(0, ["a", "b", "c"]))
    assert (adv - clean).abs().max() <= pgd.eps + 1e-6 and adv.abs().max() <= 1
    assert not torch.equal(adv, clean)
    for step in range(5):
        adv = pgd.step(adv, clean, torch.randn_like(clean), ascend=True, step=step)
        assert (adv - clean).abs().max() <= pgd.eps + 1e-6 and adv.abs().max() <= 1


def test_sign_step_moves_along_the_gradient_direction():
    clean = torch.zeros(1, 3, 4, 4)
    grad = torch.randn(1, 3, 4, 4)
    pgd = PGD(eps_255=16, alpha_255=2, steps=1)
    up = pgd.step(clean, clean, grad, ascend=True)
    down = pgd.step(clean, clean, grad, ascend=False)
    assert torch.allclose(up, grad.sign() * pgd.alpha) and torch.allclose(down, -grad.sign() * pgd.alpha)


def test_linear_schedule_decays_to_the_final_fraction():
    pgd = PGD(eps_255=8, alpha_255=2, steps=100, step_schedule="linear", final_step_fraction=0.01)
    assert pgd.step_size(0) == pytest.approx(pgd.alpha)
    assert pgd.step_size(50) == pytest.approx(pgd.alpha * (1 - 0.99 * 0.5))
    assert pgd.step_size(100) == pytest.approx(pgd.alpha * 0.01)


@pytest.mark.parametrize("eps_255", [16, 6.375, 7.65, 0.5])
def test_finalize_holds_the_budget_on_the_saved_png(tmp_path, eps_255):
    clean = _grid_images()
    pgd = PGD(eps_255=eps_255, alpha_255=1, steps=1)
    # A perturbation at the edge of the float budget: naive rounding would exceed it.
    adv = pgd.project(clean + pgd.eps * torch.randn_like(clean).sign() * 0.9999 + 0.6 / 127.5, clean)
    final = pgd.finalize(adv, clean)
    for index in range(len(clean)):
        path = tmp_path / f"{index}.png"
        save_png(final[index], path)
        measured = measure_saved_image(path, clean[index])
        assert measured["linf_255"] <= eps_255
    assert int(((final - clean).abs().max() * 127.5).round()) == int(eps_255 + 1e-6)  # the budget is used


def test_l2_finalize_holds_the_budget():
    clean = _grid_images()
    pgd = PGD(eps_255=200, alpha_255=50, steps=3, norm="l2", random_start=True)
    adv = pgd.start(clean, image_generators(1, ["a", "b", "c"]))
    for step in range(3):
        adv = pgd.step(adv, clean, torch.randn_like(clean), ascend=True, step=step)
    final = pgd.finalize(adv, clean)
    levels = ((final + 1) * 127.5).round() - ((clean + 1) * 127.5).round()
    assert (levels.flatten(1).norm(dim=1) <= 200 + 1e-4).all()
    assert levels.abs().sum() > 0


def test_non_finite_gradient_is_an_error():
    pgd = PGD(eps_255=8, alpha_255=1, steps=3)
    clean = torch.zeros(1, 3, 4, 4)
    grad = torch.zeros_like(clean)
    grad[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite at step 2"):
        pgd.step(clean, clean, grad, ascend=True, step=2)
