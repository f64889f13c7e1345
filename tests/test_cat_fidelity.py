"""CAT fidelity: the protection distorts latents beyond noise, and, on the testbed VAE, CAT undoes
the protection's damage beyond what fitting the VAE to the images does (the noise-trained control).

The testbed (tests/data/testbed) is built by benchmarks/testbed/make_testbed.py. Every measured
number is printed in the test output; the thresholds are the issue's (CONTROL_MARGIN, "clearly
more than the control", was fixed before the testbed was measured).

The encoder attack (PhotoGuard / Mist style) raises the testbed VAE's reconstruction error only
~1.6x (the tiny VAE reproduces the perturbation instead of amplifying it, unlike Stable
Diffusion's); an end-to-end reconstruction attack of the same budget reaches ~2.9x, so CAT is
tested on that one. Two claims do NOT hold here and are marked ``xfail(strict=True)``, so they
run on every CI build and turn into failures the day they hold (then remove the marker): the
encoder attack's 2x, and CAT closing clearly (CONTROL_MARGIN) more of the gap than the
noise-trained control (measured ~16 points more: much of CAT's gain on five images is what
fitting the VAE to them gives). The measured tables are in benchmarks/README.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_cat.datamodules import ImageFolderDataset
from lightning_cat.diffusion import load_vae
from lightning_cat.images import ImageTransform
from lightning_cat.metrics import LatentDistortion
from lightning_cat.studies.cat_fidelity import (
    checkerboard,
    fidelity_study,
    format_fidelity_table,
    reconstruction_attack,
    sign_noise,
    target_latent_encoder_attack,
    uniform_noise,
)

TESTBED = Path(__file__).parent / "data" / "testbed"
RESOLUTION = 64
#: CAT on the testbed: small adapters, short training (the tiny VAE has 16-64 channels).
CAT_OPTIONS = {"rank": 4, "learning_rate": 5e-4, "steps": 150, "batch_size": 5}
#: "Clearly more than the control": CAT must close at least this much more of the gap.
CONTROL_MARGIN = 0.25


def _images(folder) -> torch.Tensor:
    dataset = ImageFolderDataset(folder, ImageTransform(resolution=RESOLUTION))
    return torch.stack([dataset.load(i) for i in range(len(dataset))])


def _latent_distortion(vae, protected, clean) -> float:
    metric = LatentDistortion(vae)
    metric.update(protected, clean)
    return metric.compute()["latent_mse_relative"].item()


def _show(capsys, text: str) -> None:
    with capsys.disabled():  # measured numbers belong in the CI log, pass or fail
        print(text)


def test_protection_distorts_tiny_latents_far_beyond_noise(tiny_model_path, photos_dir, capsys):
    vae = load_vae("tiny")
    clean = _images(photos_dir)
    generator = torch.Generator().manual_seed(0)
    protected = target_latent_encoder_attack(vae, clean, checkerboard(RESOLUTION), eps_255=8, steps=30)
    attack = _latent_distortion(vae, protected, clean)
    uniform = _latent_distortion(vae, uniform_noise(clean, 8, generator), clean)
    signs = _latent_distortion(vae, sign_noise(clean, 8, generator), clean)
    _show(
        capsys,
        f"\n[fidelity] tiny VAE, 8/255: relative latent distortion of the encoder attack {attack:.4g}, "
        f"uniform noise {uniform:.4g} ({attack / uniform:.1f}x), random +-eps {signs:.4g} ({attack / signs:.1f}x)",
    )
    assert (protected - clean).abs().max() <= 2 * 8 / 255 + 1e-6
    assert attack >= 5 * uniform and attack >= 3 * signs


@pytest.fixture(scope="module")
def testbed():
    return load_vae(str(TESTBED)).requires_grad_(False).eval(), _images(TESTBED / "clean")


def test_testbed_vae_reconstructs_held_out_photos(testbed, capsys):
    vae, clean = testbed
    metric = LatentDistortion(vae)
    metric.update(clean, clean)
    psnr = metric.compute()["clean_recon_psnr"].item()
    _show(capsys, f"\n[fidelity] testbed VAE: mean PSNR {psnr:.2f} dB on {len(clean)} held-out photographs")
    assert psnr >= 22.0


ENCODER_ATTACK = "encoder attack 16/255"
RECONSTRUCTION_ATTACK = "reconstruction attack 16/255"


def _encoder_attack(vae, images):
    return target_latent_encoder_attack(vae, images, checkerboard(RESOLUTION), eps_255=16, steps=100)


def _damage(vae, protected, clean) -> dict[str, float]:
    metric = LatentDistortion(vae)
    metric.update(protected, clean)
    values = metric.compute()
    return {
        "latent": values["latent_mse_relative"].item(),
        "against_clean": (values["recon_mse"] / values["clean_recon_mse"]).item(),
        "against_self": (values["recon_mse_self"] / values["clean_recon_mse"]).item(),
    }


@pytest.fixture(scope="module")
def reconstruction_protected(testbed):
    vae, clean = testbed
    return reconstruction_attack(vae, clean, eps_255=16, steps=100)


def _check_twofold_damage(vae, protected, clean, attack: str, capsys) -> None:
    """The protection stays within 16/255 on the 8-bit grid and doubles the reconstruction error."""
    damage = _damage(vae, protected, clean)
    _show(
        capsys,
        f"\n[fidelity] testbed, {attack}: relative latent distortion {damage['latent']:.4f}; "
        f"reconstruction error {damage['against_clean']:.2f}x the clean one against the clean images, "
        f"{damage['against_self']:.2f}x against the protected images themselves",
    )
    assert (protected - clean).abs().max() <= 2 * 16 / 255 + 1e-6
    assert damage["against_clean"] >= 2


def test_reconstruction_attack_damages_testbed_reconstructions_twofold(testbed, reconstruction_protected, capsys):
    vae, clean = testbed
    _check_twofold_damage(vae, reconstruction_protected, clean, RECONSTRUCTION_ATTACK, capsys)


@pytest.mark.xfail(strict=True, reason="the encoder attack raises the testbed VAE's error ~1.6x, not 2x")
def test_encoder_attack_damages_testbed_reconstructions_twofold(testbed, capsys):
    vae, clean = testbed
    _check_twofold_damage(vae, _encoder_attack(vae, clean), clean, ENCODER_ATTACK, capsys)


@pytest.fixture(scope="module")
def cat_vs_control(testbed, reconstruction_protected):
    """CAT both and the noise-trained control on the reconstruction attack (the regime where the
    protection doubles the reconstruction error)."""
    vae, clean = testbed
    rows = fidelity_study(
        vae,
        clean,
        {RECONSTRUCTION_ATTACK: lambda model, images, generator: reconstruction_protected},
        variants=("both",),
        cat_options=CAT_OPTIONS,
    )
    rows = {row.name: row for row in rows}
    return rows[f"CAT both on {RECONSTRUCTION_ATTACK}"], rows[
        f"control (CAT both on uniform noise) on {RECONSTRUCTION_ATTACK}"
    ]


def _show_gap(capsys, cat, control) -> None:
    _show(
        capsys,
        f"\n[fidelity] testbed, {RECONSTRUCTION_ATTACK}, CAT {CAT_OPTIONS}: CAT both closes "
        f"{100 * cat.gap_closed:.0f}% of the protection's reconstruction gap (against the clean images); "
        f"the noise-trained control {100 * control.gap_closed:.0f}%",
    )


def test_cat_closes_half_the_reconstruction_gap(cat_vs_control, capsys):
    cat, control = cat_vs_control
    _show_gap(capsys, cat, control)
    assert cat.gap_closed >= 0.5


@pytest.mark.xfail(
    strict=True, reason="on the testbed the noise-trained control closes ~16 points less than CAT, not 25"
)
def test_cat_closes_clearly_more_than_the_noise_control(cat_vs_control, capsys):
    cat, control = cat_vs_control
    _show_gap(capsys, cat, control)
    assert cat.gap_closed >= control.gap_closed + CONTROL_MARGIN


@pytest.mark.slow
def test_fidelity_table_on_the_testbed(testbed, reconstruction_protected, capsys):
    """Both protections, every variant and the control (the paper's ordering, both > encoder >
    decoder, is reported, not asserted)."""
    vae, clean = testbed
    rows = fidelity_study(
        vae,
        clean,
        {
            ENCODER_ATTACK: lambda model, images, generator: _encoder_attack(model, images),
            RECONSTRUCTION_ATTACK: lambda model, images, generator: reconstruction_protected,
        },
        variants=("both", "encoder", "decoder"),
        cat_options=CAT_OPTIONS,
    )
    _show(capsys, f"\n[fidelity] testbed study (CAT {CAT_OPTIONS}):\n{format_fidelity_table(rows)}")
    by_name = {row.name: row.metrics for row in rows}
    for attack in (ENCODER_ATTACK, RECONSTRUCTION_ATTACK):  # decoder-only CAT keeps the encoder's latents
        decoder = by_name[f"CAT decoder on {attack}"]["latent_mse_relative"]
        assert decoder == pytest.approx(by_name[attack]["latent_mse_relative"], rel=1e-5)
