"""The plain-torch CAT loop: seeded and reproducible, per-image noise independent of batching,
the objective falls, the schedule is AdamW + cosine to zero."""

from __future__ import annotations

import pytest
import torch

from lightning_cat.cat import CATLoss, cat_optimizer, per_image_noise, train_cat_adapter
from lightning_cat.diffusion import load_vae


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _lora(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


def test_per_image_noise_does_not_depend_on_the_batch():
    together = per_image_noise((4, 8, 8), [0, 3, 5], seed=1, step=7)
    assert torch.equal(together[1], per_image_noise((4, 8, 8), [3], seed=1, step=7)[0])
    assert not torch.equal(together[1], per_image_noise((4, 8, 8), [3], seed=1, step=8)[0])


def test_loop_is_seeded_and_lowers_the_objective(tiny_model_path, images):
    options = {"rank": 2, "steps": 6, "batch_size": 4, "learning_rate": 1e-2}  # batch > set: cycles through it
    with torch.no_grad():
        before = CATLoss()(load_vae("tiny"), images).loss
    first = train_cat_adapter(load_vae("tiny"), images, seed=3, **options)
    second = train_cat_adapter(load_vae("tiny"), images, seed=3, **options)
    third = train_cat_adapter(load_vae("tiny"), images, seed=4, **options)
    a, b, c = _lora(first), _lora(second), _lora(third)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert any(not torch.equal(a[name], c[name]) for name in a)
    with torch.no_grad():
        assert CATLoss()(first, images).loss < before


def test_cosine_schedule_reaches_zero():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer, scheduler = cat_optimizer([parameter], num_steps=4, learning_rate=1e-4)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["weight_decay"] == 1e-2
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(1e-4) and rates == sorted(rates, reverse=True)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="lr_scheduler='step' is not one of"):
        cat_optimizer([parameter], num_steps=4, lr_scheduler="step")
