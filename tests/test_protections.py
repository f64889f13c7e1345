"""Every protection method on the tiny model, through the plain-torch API (no Lightning).

Images are 32 px here (the tiny VAE halves them: 16x16 latents) to keep the suite fast.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from lightning_cat.diffusion import load_components
from lightning_cat.images import save_png
from lightning_cat.imageset import measure_saved_image
from lightning_cat.protections import PROTECTIONS, DiffusionObjective, build_protection, protect
from lightning_cat.protections.sds import SDSObjective
from lightning_cat.protections.surrogate import cross_attention_kv_parameters
from lightning_cat.seeding import image_generators

KEYS = ["astronaut", "chelsea"]

#: Few, large steps so each method runs in about a second on the tiny model.
FAST = {
    "advdm_plus": dict(alpha_255=4, steps=4),
    "advdm_minus": dict(alpha_255=4, steps=4),
    "photoguard": dict(steps=6),
    "mist": dict(alpha_255=4, steps=4),
    "sds_plus": dict(alpha_255=4, steps=6),
    "sds_minus": dict(alpha_255=4, steps=6),
    "sdst": dict(alpha_255=4, steps=4),
    "fsmg": dict(alpha_255=2, steps=4, surrogate_pretrain_steps=2, surrogate_lr=1e-4),
    "aspl": dict(alpha_255=2, steps=2, iterations=2, surrogate_steps=1, surrogate_lr=1e-4),
    "metacloak": dict(
        alpha_255=3,
        steps=3,
        rounds=1,
        pool_size=2,
        pool_interval=1,
        cycles_per_snapshot=1,
        surrogate_steps=1,
        surrogate_lr=1e-4,
        eot_transforms=["gaussian_blur", "hflip"],
    ),
    "caat": dict(alpha_255=3, steps=5, surrogate_lr=1e-4),
    "glaze_style": dict(alpha_255=4, steps=4, style_steps=2, lpips_random_backbone=True),
}


@pytest.fixture(scope="module")
def tiny():
    return load_components("tiny")


@pytest.fixture(scope="module")
def clean(photos_dir):
    from lightning_cat.images import ImageTransform, load_image

    transform = ImageTransform(resolution=32)
    return torch.stack([transform(load_image(photos_dir / f"{key}.png")) for key in KEYS])


@pytest.fixture
def fixed_draws(monkeypatch):
    """Every draw of a diffusion objective uses the same timesteps and noise (per image position)."""
    original = DiffusionObjective.draw

    def fixed(self, images, generators):
        return original(self, images, image_generators(123, [str(i) for i in range(images.shape[0])]))

    monkeypatch.setattr(DiffusionObjective, "draw", fixed)
    return fixed


def test_every_method_is_registered():
    assert sorted(PROTECTIONS) == sorted(FAST)


@pytest.mark.parametrize("method", list(FAST))
def test_budget_on_saved_png_and_direction_at_fixed_noise(method, tiny, clean, fixed_draws, tmp_path):
    components = copy.deepcopy(tiny)  # surrogate methods train in place here
    protection = build_protection(method, components, in_place=True, show_progress=False, **FAST[method])
    class_images = clean.flip(-1) if protection.coupled else None
    protected = protection.protect(clean, KEYS, seed=0, class_images=class_images)

    eps_255 = protection.options["eps_255"]
    for key, image, source in zip(KEYS, protected, clean, strict=True):
        save_png(image, tmp_path / f"{key}.png")
        measured = measure_saved_image(tmp_path / f"{key}.png", source)
        assert 0 < measured["linf_255"] <= eps_255

    objective = protection.objective
    draw = fixed_draws(objective, clean, None) if isinstance(objective, DiffusionObjective) else None
    with torch.no_grad():
        if isinstance(objective, SDSObjective):
            # SDS follows no loss's gradient; to first order it moves <residual, E(x)>, residual fixed.
            residual, _ = objective.score_residual(objective.latents(clean, draw), draw)
            before = objective.distillation_loss(clean, draw, residual).mean().item()
            after = objective.distillation_loss(protected, draw, residual).mean().item()
        else:
            before = objective.loss(clean, draw).mean().item()
            after = objective.loss(protected, draw).mean().item()
    moved = after - before if objective.ascend else before - after
    assert moved > 0, f"{method}: objective {before:.6g} -> {after:.6g} ({'ascend' if objective.ascend else 'descend'})"


def test_same_seed_same_images_and_batching_does_not_matter(tiny, clean):
    options = dict(method="advdm_plus", components=tiny, show_progress=False, **FAST["advdm_plus"])
    first = protect(clean, keys=KEYS, seed=3, **options)
    assert torch.equal(first, protect(clean, keys=KEYS, seed=3, **options))
    # Per-image randomness comes from (seed, key): order and batch composition do not matter.
    assert torch.equal(protect(clean[[1, 0]], keys=KEYS[::-1], seed=3, **options), first[[1, 0]])
    assert torch.equal(protect(clean[1:], keys=KEYS[1:], seed=3, **options), first[1:])
    assert not torch.equal(protect(clean, keys=KEYS, seed=4, **options), first)


def test_aspl_allocates_its_surrogate_once(tiny, clean, monkeypatch):
    import lightning_cat.protections.surrogate as surrogate_module

    copies = []

    def counting_deepcopy(obj, *args):
        copies.append(type(obj).__name__)
        return copy.deepcopy(obj, *args)

    monkeypatch.setattr(surrogate_module, "copy_module", SimpleNamespace(deepcopy=counting_deepcopy, copy=copy.copy))
    options = dict(FAST["aspl"], iterations=3)
    protection = build_protection("aspl", tiny, show_progress=False, **options)
    pointers = []

    def record(kind, loss):
        if kind == "pgd":
            pointers.append(tuple(p.data_ptr() for p in protection.surrogate.parameters()))

    weights_before = {k: v.clone() for k, v in tiny.unet.state_dict().items()}
    flags_before = [p.requires_grad for p in tiny.unet.parameters()]
    protection.protect(clean, KEYS, seed=0, callback=record)
    # theta (a copy of UNet and text encoder) is the only model made, whatever the number of
    # iterations: theta' trains in its modules while theta's weights wait in the stash.
    assert copies == ["UNet2DConditionModel", "CLIPTextModel"]
    assert len(pointers) == options["iterations"] * options["steps"] and len(set(pointers)) == 1
    # The caller's components are untouched without in_place.
    assert all(torch.equal(v, tiny.unet.state_dict()[k]) for k, v in weights_before.items())
    assert [p.requires_grad for p in tiny.unet.parameters()] == flags_before


def test_aspl_in_place_copies_no_model(tiny, clean, monkeypatch):
    import lightning_cat.protections.surrogate as surrogate_module

    copies = []
    monkeypatch.setattr(
        surrogate_module,
        "copy_module",
        SimpleNamespace(deepcopy=lambda obj, *a: copies.append(obj) or copy.deepcopy(obj, *a), copy=copy.copy),
    )
    components = copy.deepcopy(tiny)
    build_protection("aspl", components, in_place=True, show_progress=False, **FAST["aspl"]).protect(
        clean, KEYS, seed=0
    )
    assert copies == []


def _aspl_with_two_models(protection, clean, keys, seed, class_images):
    """ASPL the way the reference holds it: theta and a separate theta' refreshed from it each round."""
    from lightning_cat.protections.base import SurrogateData

    options = protection.options
    theta = protection.make_surrogate(seed, "aspl-theta", copy=True)
    theta_prime = theta.clone(generator=torch.Generator().manual_seed(theta.generator.initial_seed() ^ 1))
    data = SurrogateData(class_images=class_images)
    clean_set = theta.encode(protection.surrogate_training_set(clean, data))
    class_set = theta.encode(class_images)
    generators = image_generators(seed, keys)
    adv = protection.pgd.start(clean, generators)
    for iteration in range(options["iterations"]):
        theta_prime.load_state_dict(theta.state_dict())
        theta_prime.train(clean_set, class_set, options["surrogate_steps"])
        objective = protection.make_objective(theta_prime)
        with theta_prime.frozen():
            adv = protection.pgd_steps(
                adv, clean, objective, generators, options["steps"], iteration * options["steps"], lambda *a: None
            )
        theta.train(theta.encode(adv), class_set, options["surrogate_steps"])
    theta.release()
    return protection.pgd.finalize(adv, clean)


@pytest.mark.parametrize("stash", ["cpu", "disk", "device"])
def test_aspl_stash_changes_memory_not_results(tiny, clean, stash, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    options = dict(FAST["aspl"], iterations=3, surrogate_steps=2)
    protection = build_protection("aspl", tiny, show_progress=False, theta_stash=stash, **options)
    class_images = clean.flip(-1)
    expected = _aspl_with_two_models(protection, clean, KEYS, 5, class_images)
    assert torch.equal(protection.protect(clean, KEYS, seed=5, class_images=class_images), expected)
    assert list(tmp_path.iterdir()) == []  # the disk stash's folder is gone


@pytest.mark.parametrize("optimizer", ["adamw", "adamw_8bit"])
def test_optimizer_state_stash_changes_memory_not_results(tiny, clean, optimizer, tmp_path, monkeypatch):
    if optimizer == "adamw_8bit":
        pytest.importorskip("bitsandbytes")
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    options = dict(FAST["aspl"], iterations=2, surrogate_steps=2, surrogate_optimizer=optimizer)
    results = {
        location: build_protection(
            "aspl", tiny, show_progress=False, optimizer_state_stash=location, **options
        ).protect(clean, KEYS, seed=5, class_images=clean.flip(-1))
        for location in ("device", "cpu", "disk")
    }
    assert torch.equal(results["cpu"], results["device"]) and torch.equal(results["disk"], results["device"])
    assert not torch.equal(results["device"], clean)
    assert list(tmp_path.iterdir()) == []  # the disk stash's files are gone
    with pytest.raises(ValueError, match=r"optimizer_state_stash must be one of \['device', 'cpu', 'disk'\]"):
        build_protection("fsmg", tiny, optimizer_state_stash="gpu")
    with pytest.raises(ValueError, match="optimizer_state_stash"):  # CAAT's optimizer runs its own loop
        build_protection("caat", tiny, optimizer_state_stash="disk")


@pytest.mark.parametrize("stash", ["disk", "device"])
def test_metacloak_pool_stash_changes_memory_not_results(tiny, clean, stash, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    options = dict(FAST["metacloak"], pool_size=3, rounds=2)
    class_images = clean.flip(-1)
    results = {}
    for location in ("cpu", stash):
        protection = build_protection("metacloak", tiny, show_progress=False, pool_stash=location, **options)
        results[location] = protection.protect(clean, KEYS, seed=5, class_images=class_images)
    assert torch.equal(results[stash], results["cpu"]) and not torch.equal(results["cpu"], clean)
    assert list(tmp_path.iterdir()) == []  # the disk stashes' folders are gone


@pytest.mark.parametrize("method", ["advdm_plus", "photoguard", "aspl"])
def test_gradient_checkpointing_recomputes_blocks_without_changing_results(tiny, clean, method):
    # A layer inside a checkpointed block runs again in the backward pass (the block's own hook does not).
    blocks = {
        "vae": tiny.vae.encoder.down_blocks[0].resnets[0].conv1,
        "unet": tiny.unet.down_blocks[0].resnets[0].conv1,
    }
    results, calls = {}, {False: dict.fromkeys(blocks, 0), True: dict.fromkeys(blocks, 0)}
    for checkpointing in (False, True):
        counts = calls[checkpointing]
        hooks = [
            block.register_forward_hook(lambda *_, name=name, counts=counts: counts.update({name: counts[name] + 1}))
            for name, block in blocks.items()
        ]
        try:
            results[checkpointing] = protect(
                clean,
                keys=KEYS,
                seed=3,
                method=method,
                components=tiny,
                show_progress=False,
                gradient_checkpointing=checkpointing,
                **FAST[method],
            )
        finally:
            for hook in hooks:
                hook.remove()
    assert torch.equal(results[True], results[False]) and not torch.equal(results[False], clean)
    assert calls[True]["vae"] > calls[False]["vae"]
    if method == "advdm_plus":
        assert calls[True]["unet"] > calls[False]["unet"]
    assert not tiny.vae.is_gradient_checkpointing and not tiny.unet.is_gradient_checkpointing  # switched back off
    with pytest.raises(ValueError, match=r"gradient_checkpointing must be true or false, got 'yes'"):
        build_protection(method, tiny, gradient_checkpointing="yes")


def test_surrogate_optimizer_8bit_keeps_8bit_states_and_changes_the_images(tiny, clean, monkeypatch):
    pytest.importorskip("bitsandbytes")
    from lightning_cat.protections.surrogate import Surrogate

    states = []
    original = Surrogate.optimizer

    def recording(self):
        optimizer = original(self)
        states.append(optimizer)
        return optimizer

    monkeypatch.setattr(Surrogate, "optimizer", recording)
    options = dict(FAST["aspl"], surrogate_steps=3)  # Adam's first step is about lr * sign(g) in both
    reference = protect(clean, keys=KEYS, seed=0, method="aspl", components=tiny, show_progress=False, **options)
    protected = protect(
        clean,
        keys=KEYS,
        seed=0,
        method="aspl",
        components=tiny,
        show_progress=False,
        surrogate_optimizer="adamw_8bit",
        **options,
    )
    assert type(states[-1]).__name__ == "AdamW8bit"
    assert any(v.dtype == torch.uint8 for s in states[-1].state.values() for v in s.values() if torch.is_tensor(v))
    assert not torch.equal(protected, reference)
    with pytest.raises(ValueError, match=r"surrogate_optimizer must be one of \['adamw', 'adamw_8bit'\]"):
        build_protection("aspl", tiny, surrogate_optimizer="sgd")
    with pytest.raises(ValueError, match=r"theta_stash must be one of \['device', 'cpu', 'disk'\].*'gpu'"):
        build_protection("aspl", tiny, theta_stash="gpu")
    with pytest.raises(ValueError, match=r"pool_stash must be one of \['device', 'cpu', 'disk'\].*'gpu'"):
        build_protection("metacloak", tiny, pool_stash="gpu")


def test_caat_trains_only_cross_attention_key_value(tiny, clean):
    components = copy.deepcopy(tiny)
    before = {name: p.detach().clone() for name, p in components.unet.named_parameters()}
    protection = build_protection("caat", components, in_place=True, show_progress=False, **FAST["caat"])
    protection.protect(clean, KEYS, seed=0)
    trained = {name for name, _ in cross_attention_kv_parameters(components.unet)}
    changed = {name for name, p in components.unet.named_parameters() if not torch.equal(p, before[name])}
    assert changed == trained


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(method="advdm_plus", eps_255=0), "eps_255"),
        (dict(method="advdm_plus", eps_255=300), "eps_255"),
        (dict(method="advdm_plus", steps=0), "steps"),
        (dict(method="pgd_magic"), "unknown protection method 'pgd_magic'; choose one of"),
        (dict(method="advdm_plus", target_image="x.png"), "does not take option"),
        (dict(method="mist", target_image="/no/such/file.png"), "target_image must be an existing image file"),
        (dict(method="metacloak", eot_transforms=["rotate"]), "eot_transforms"),
    ],
)
def test_bad_options_fail_before_any_model_is_needed(options, match):
    with pytest.raises(ValueError, match=match):
        protect(torch.zeros(1, 3, 32, 32), components=None, **options)


def test_glaze_style_lpips_penalty_keeps_the_cloak_closer_to_the_image(tiny, clean):
    from lightning_cat.perceptual import load_lpips

    lpips = load_lpips("alex", random_backbone=True)
    options = dict(alpha_255=4, steps=6, style_steps=2, lpips_random_backbone=True)
    free = protect(clean, method="glaze_style", components=tiny, keys=KEYS, lpips_weight=0.0, **options)
    held = protect(
        clean, method="glaze_style", components=tiny, keys=KEYS, lpips_weight=1e3, lpips_budget=0.0, **options
    )
    with torch.no_grad():
        distance_free, distance_held = lpips(free, clean).mean().item(), lpips(held, clean).mean().item()
    print(f"glaze_style LPIPS to the image: no penalty {distance_free:.4f}, penalty {distance_held:.4f}")
    assert distance_held < distance_free


def test_glaze_style_target_image_is_the_style_target(tiny, clean, photos_dir):
    protection = build_protection(
        "glaze_style", tiny, target_image=str(photos_dir / "rocket.png"), lpips_random_backbone=True, steps=1
    )
    targets = protection.style_targets(clean, image_generators(0, KEYS))
    assert torch.equal(targets[0], targets[1]) and not torch.equal(targets[0], clean[0])


@pytest.mark.parametrize("location", ["cpu", "disk", "device"])
def test_weight_stash_restores_exactly_into_the_same_storage(location, tmp_path):
    from lightning_cat.protections.stash import WeightStash

    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    saved = {k: v.clone() for k, v in module.state_dict().items()}
    pointers = [p.data_ptr() for p in module.parameters()]
    with WeightStash(location, directory=tmp_path) as stash:
        for _ in range(2):  # the second save reuses the first's buffers / file
            stash.save({"m": module})
            with torch.no_grad():
                for parameter in module.parameters():
                    parameter.add_(1.0)
            stash.restore({"m": module})
            assert all(torch.equal(v, saved[k]) for k, v in module.state_dict().items())
    assert [p.data_ptr() for p in module.parameters()] == pointers
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"one of \['device', 'cpu', 'disk'\], got 'gpu'"):
        WeightStash("gpu")
    with pytest.raises(RuntimeError, match="before save"):
        WeightStash(location, directory=tmp_path).restore({"m": module})
