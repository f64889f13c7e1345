"""FID: the Frechet formula on the same features, ~0 against itself, reference cache, Inception offline."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from lightning_cat.images import ImageTransform
from lightning_cat.metrics import FID, RandomFeatureExtractor, load_inception


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * root))


@pytest.fixture(scope="module")
def two_sets():
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(24, 3, 32, 32, generator=generator) * 2 - 1
    flat = torch.rand(24, 3, 1, 1, generator=generator) * 2 - 1
    generated = (flat + 0.1 * torch.randn(24, 3, 32, 32, generator=generator)).clamp(-1, 1)
    return clean, generated


def test_fid_equals_the_formula_on_the_same_features(two_sets):
    clean, generated = two_sets
    fid = FID(RandomFeatureExtractor(num_features=8))
    for start in range(0, 24, 10):
        fid.update(clean[start : start + 10], real=True)
        fid.update(generated[start : start + 10])
    expected = _frechet(fid.features(clean).numpy(), fid.features(generated).numpy())
    assert expected > 0.01
    assert fid.compute().item() == pytest.approx(expected, rel=1e-4)


def test_fid_of_a_set_with_itself_is_zero(two_sets):
    clean, generated = two_sets
    fid = FID(RandomFeatureExtractor(num_features=8))
    fid.update(clean, real=True)
    fid.update(clean)
    assert abs(fid.compute().item()) < 1e-6
    fid.reset()
    fid.update(clean, real=True)
    fid.update(generated)
    assert fid.compute().item() > 0.01


def test_reference_folder_statistics_are_cached_by_content(photos_dir, image_folder, tmp_path, monkeypatch):
    files = sorted(photos_dir.glob("*.png"))
    folder = image_folder(*files, name="reference")
    transform = ImageTransform(resolution=64)
    cache = tmp_path / "cache"
    fid = FID(RandomFeatureExtractor(num_features=4))
    first = fid.set_reference_folder(folder, transform, batch_size=2, cache_dir=cache)
    assert first.is_file() and fid.reference_num_samples == len(files)

    # The reference statistics equal those of the same images fed as "real" updates.
    from lightning_cat.datamodules import ImageFolderDataset

    images = torch.stack([item["image"] for item in ImageFolderDataset(folder, transform)])
    direct = FID(RandomFeatureExtractor(num_features=4))
    direct.update(images, real=True)
    direct.update(images[:3])
    fid.update(images[:3])
    assert fid.compute().item() == pytest.approx(direct.compute().item(), rel=1e-6, abs=1e-9)

    # A second metric loads the file and never extracts reference features.
    cached = FID(RandomFeatureExtractor(num_features=4))
    monkeypatch.setattr(FID, "features", lambda *a, **k: pytest.fail("reference features were recomputed"))
    assert cached.set_reference_folder(folder, transform, cache_dir=cache) == first
    assert torch.equal(cached.reference_cov, fid.reference_cov)
    monkeypatch.undo()

    # Other bytes, another extractor or another preprocessing give another key.
    changed = image_folder(*files, name="changed")
    (changed / files[0].name).write_bytes(files[1].read_bytes())
    assert fid.set_reference_folder(changed, transform, cache_dir=cache) != first
    other = FID(RandomFeatureExtractor(num_features=4, seed=1))
    assert other.set_reference_folder(folder, transform, cache_dir=cache) != first
    assert fid.set_reference_folder(folder, ImageTransform(resolution=72), cache_dir=cache) != first


def test_inception_loads_from_a_local_file_without_download(tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    # Write an Inception state dict with random weights (building one needs weights, so skip loading once).
    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
    torch.manual_seed(0)
    random_net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(random_net.state_dict(), tmp_path / "inception.pth")
    monkeypatch.undo()
    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))

    extractor = load_inception(tmp_path / "inception.pth", num_features=2048)
    assert torch.equal(extractor.inception.Conv2d_1a_3x3.conv.weight, random_net.Conv2d_1a_3x3.conv.weight)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    fid = FID(extractor)
    assert fid.features(images).shape == (2, 2048)

    with pytest.raises(ValueError, match="fid_weights"):
        load_inception(None)
    with pytest.raises(FileNotFoundError, match="fid_weights .* does not exist"):
        load_inception(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="num_features=.* is not one of"):
        load_inception(tmp_path / "inception.pth", num_features=1000)
