"""CLIP-based metrics against hand computations and torchmetrics on the same models; CLIP loading offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_cat.images import ImageTransform, pil_to_tensor
from lightning_cat.metrics import (
    CLIPIQA,
    CLIPIQAC,
    CLIPTextSimilarity,
    CLIPZeroShotProbability,
    build_tiny_clip,
    load_clip,
)
from lightning_cat.metrics.clip_models import AttentionPoolWithoutPositions, CLIPEncoder, without_positional_embedding
from lightning_cat.pixels import to_levels

sys.path.insert(0, str(Path(__file__).parent / "data"))
import make_images  # noqa: E402

CLIP_IDS = [49406, 320, 1125, 539, 48136, 1929, 49407]  # "a photo of sks dog" in the real CLIP vocabulary
# Pairs chosen so the tiny model's probabilities are not saturated at 0 or 1 (the check means something).
PAIRS = [("Good photo.", "Bad photo."), ("Sharp photo.", "Blurry photo.")]


@pytest.fixture(scope="module")
def clip():
    return build_tiny_clip()


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 48, 40, generator=generator) * 2 - 1


def _softmax_pairs(image_embeddings, text_embeddings):
    logits = 100.0 * image_embeddings.numpy().astype(np.float64) @ text_embeddings.numpy().astype(np.float64).T
    logits = logits.reshape(len(logits), -1, 2)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp[..., 0] / exp.sum(axis=-1)


def test_tiny_clip_uses_the_real_tokenizer_and_is_deterministic(clip, images):
    assert clip.tokenizer(["a photo of sks dog"])[0][:7].tolist() == CLIP_IDS
    again = build_tiny_clip()
    assert torch.equal(clip.encode_images(images), again.encode_images(images))
    embeddings = clip.encode_texts(["a", "b c"])
    assert embeddings.shape == (2, 32) and torch.allclose(embeddings.norm(dim=-1), torch.ones(2))


def test_clip_iqa_is_the_antonym_softmax(clip, images):
    metric = CLIPIQA(clip, prompts=PAIRS)
    metric.update(images[:4])
    metric.update(images[4:])
    texts = clip.encode_texts([t for pair in PAIRS for t in pair])
    probabilities = _softmax_pairs(clip.encode_images(images), texts)
    assert ((probabilities > 0.01) & (probabilities < 0.99)).sum() >= 3  # some values not saturated
    assert metric.compute().item() == pytest.approx(probabilities.mean(), abs=1e-5)


def test_clip_iqac_is_p_good_minus_p_bad(clip, images):
    templates = [("a sharp photo of a {class_name}", "a blurry photo of a {class_name}")]
    metric = CLIPIQAC(clip, class_name="dog", templates=templates)
    metric.update(images)
    texts = clip.encode_texts(["a sharp photo of a dog", "a blurry photo of a dog"])
    p_good = _softmax_pairs(clip.encode_images(images), texts)[:, 0]
    assert metric.compute().item() == pytest.approx(np.mean(p_good - (1 - p_good)), abs=1e-5)
    with pytest.raises(ValueError, match="class_name"):
        CLIPIQAC(clip, templates=[("good", "bad")])
    with pytest.raises(ValueError, match="CLIPIQA: prompts must be"):
        CLIPIQA(clip, prompts=[("only one",)])


def test_clip_alignment_by_hand(clip, images):
    prompts = ["a photo of sks person", "a photo of a dog", "a photo of sks person"] * 2
    similarity = CLIPTextSimilarity(clip)
    similarity.update(images[:3], prompts[:3])
    similarity.update(images[3:], prompts[3:])
    image_embeddings = clip.encode_images(images).numpy().astype(np.float64)
    text_embeddings = clip.encode_texts(prompts).numpy().astype(np.float64)
    expected = np.mean(np.sum(image_embeddings * text_embeddings, axis=1))
    assert similarity.compute().item() == pytest.approx(expected, abs=1e-5)

    subject = CLIPZeroShotProbability(clip, class_name="person")
    subject.update(images)
    texts = clip.encode_texts(["a photo of a person", "noise pattern"])
    expected = _softmax_pairs(clip.encode_images(images), texts)[:, 0].mean()
    assert subject.compute().item() == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="6 images but 2 prompts"):
        similarity.update(images, prompts[:2])


def _tiny_transformers_clip(folder: Path, preprocessor: dict):
    """A random 32 px transformers CLIPModel saved with the real CLIP tokenizer and ``preprocessor`` config."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    from lightning_cat.diffusion.tiny import write_clip_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=CLIPTextConfig(
            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ).to_dict(),
        vision_config=CLIPVisionConfig(
            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32,
            patch_size=8,
        ).to_dict(),
        projection_dim=16,
    )  # fmt: skip
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    write_clip_tokenizer(folder / "tok")
    for file in (folder / "tok").iterdir():
        file.rename(folder / file.name)
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return model


def test_transformers_clip_folder_loads_offline(tmp_path, images):
    folder = tmp_path / "clip"
    model = _tiny_transformers_clip(folder, {"image_mean": [0.5] * 3, "image_std": [0.5] * 3})

    clip = load_clip("transformers", weights=folder)
    assert clip.tokenizer(["a photo of sks dog"])["input_ids"][0] == CLIP_IDS
    pixels = clip.preprocess(images)
    assert pixels.shape == (6, 3, 32, 32)
    inputs = clip.tokenizer(["a photo of sks dog"], return_tensors="pt")
    with torch.no_grad():
        text = model.get_text_features(**inputs)
        text = text if isinstance(text, torch.Tensor) else text.pooler_output
        image = model.get_image_features(pixel_values=pixels)
        image = image if isinstance(image, torch.Tensor) else image.pooler_output
    assert torch.allclose(clip.encode_texts(["a photo of sks dog"]), torch.nn.functional.normalize(text), atol=1e-6)
    assert torch.allclose(clip.encode_images(images), torch.nn.functional.normalize(image), atol=1e-6)
    # At the model's input size, preprocessing is only the mean/std normalization.
    square = images[:, :, :32, :32]
    assert torch.allclose(clip.preprocess(square), ((square + 1) / 2 - 0.5) / 0.5, atol=1e-6)


def test_open_clip_checkpoint_loads_from_a_local_file(tmp_path, images):
    import open_clip

    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "lc-test-tiny.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "configs")
    torch.manual_seed(1)
    reference = open_clip.create_model("lc-test-tiny")
    torch.save(reference.state_dict(), tmp_path / "tiny.pt")
    clip = load_clip("open_clip", model="lc-test-tiny", weights=tmp_path / "tiny.pt")
    assert torch.equal(clip.model.visual.conv1.weight, reference.visual.conv1.weight)
    with torch.no_grad():
        expected = reference.encode_text(open_clip.get_tokenizer("lc-test-tiny")(["a dog"]))
    assert torch.allclose(clip.encode_texts(["a dog"]), torch.nn.functional.normalize(expected), atol=1e-6)


def test_missing_clip_weights_fail_fast(tmp_path):
    with pytest.raises(ValueError, match="clip_weights"):
        load_clip("open_clip", model="ViT-B-32")
    with pytest.raises(FileNotFoundError, match="clip_weights .* does not exist"):
        load_clip("open_clip", model="ViT-B-32", weights=tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_clip("transformers", weights=tmp_path)
    with pytest.raises(ValueError, match="unknown clip_backend 'hub'"):
        load_clip("hub")
    (tmp_path / "x.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        load_clip("open_clip", model="No-Such-Model", weights=tmp_path / "x.pt")


# --- CLIP-IQA against torchmetrics ---------------------------------------------------------------


class TorchmetricsCLIP(torch.nn.Module):
    """A transformers CLIPModel as torchmetrics calls it: Tensor-valued feature methods.

    transformers 5 returns a ModelOutput whose ``pooler_output`` holds the projected embedding.
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    @staticmethod
    def _tensor(output) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def get_text_features(self, input_ids, attention_mask):
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    def get_image_features(self, pixel_values):
        return self._tensor(self.model.get_image_features(pixel_values=pixel_values))


def _photos(resolution: int) -> torch.Tensor:
    transform = ImageTransform(resolution=resolution)
    photos = [make_images.photo(name).convert("RGB") for name in make_images.PHOTOS]
    return torch.stack([transform.crop_tensor(pil_to_tensor(transform.resize(photo))) for photo in photos])


@pytest.mark.parametrize("prompts", [(("Good photo.", "Bad photo."),), (("Sharp photo.", "Blurry photo."),)])
def test_clip_iqa_equals_torchmetrics(tmp_path, prompts):
    """Same random CLIP, same prompts, same pixels: our per-image p(good) is torchmetrics' CLIP-IQA.

    Both pipelines see 32 px photos (the model's input size), so neither resizes: torchmetrics' CLIP
    processor (do_rescale=False: torchmetrics already divides by data_range) and our
    CLIPEncoder.preprocess both only normalize. At other sizes the one difference is that our bicubic
    resize clamps its overshoot to [0, 1] and the processor's does not (~0.05/255 per pixel on average).
    """
    from torchmetrics.functional.multimodal import clip_image_quality_assessment
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    folder = tmp_path / "clip"
    processor_config = {
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": 32},
        "crop_size": {"height": 32, "width": 32},
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    model = _tiny_transformers_clip(folder, processor_config)

    def torchmetrics_model():  # torchmetrics' custom-model hook: a zero-argument callable
        image_processor = CLIPImageProcessor.from_pretrained(folder, do_rescale=False)
        return TorchmetricsCLIP(model), CLIPProcessor(image_processor, CLIPTokenizer.from_pretrained(folder))

    photos = _photos(32)
    expected = clip_image_quality_assessment(to_levels(photos), torchmetrics_model, data_range=255.0, prompts=prompts)
    metric = CLIPIQA(load_clip("transformers", weights=folder), prompts)
    ours = metric.probabilities(photos)[:, 0]
    assert expected.shape == (len(make_images.PHOTOS),)
    assert float(expected.max() - expected.min()) > 0.05  # the scores differ between photos: a real check
    assert torch.allclose(ours, expected, atol=1e-4, rtol=0)
    metric.update(photos)
    assert metric.compute().item() == pytest.approx(expected.mean().item(), abs=1e-4)


# --- CLIP-IQA's backbone: a ResNet CLIP without positional embedding in its attention pool -------


def test_rn50_without_positional_embedding_takes_any_size():
    import open_clip

    torch.manual_seed(0)
    model = without_positional_embedding(open_clip.create_model("RN50", pretrained=None))
    clip = CLIPEncoder("open_clip", model, open_clip.get_tokenizer("RN50"), image_size=None)
    for size in ((64, 64), (96, 160)):
        images = torch.rand(2, 3, *size) * 2 - 1
        assert clip.preprocess(images).shape == (2, 3, *size)  # not resized
        embeddings = clip.encode_images(images)
        assert embeddings.shape == (2, 1024) and torch.isfinite(embeddings).all()
    # The wrapper is the original pool minus the positional embedding: equal once that is zero.
    pool = model.visual.attnpool
    features = torch.randn(2, 2048, 7, 7)
    with torch.no_grad():
        pool.pool.positional_embedding.zero_()
        assert torch.allclose(pool(features), pool.pool(features), atol=1e-4)
    with pytest.raises(ValueError, match="ResNet CLIP"):
        without_positional_embedding(build_tiny_clip().model)


@pytest.fixture
def tiny_resnet_clip(tmp_path):
    """A small random ResNet CLIP architecture registered with open_clip, and the model."""
    import open_clip

    config = {
        "embed_dim": 16,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
    }
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "lc-test-tiny-rn.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "configs")
    torch.manual_seed(2)
    return open_clip.create_model("lc-test-tiny-rn").eval()


def test_load_clip_without_positional_embedding(tmp_path, tiny_resnet_clip):
    torch.save(tiny_resnet_clip.state_dict(), tmp_path / "rn.pt")
    clip = load_clip("open_clip", model="lc-test-tiny-rn", weights=tmp_path / "rn.pt", positional_embedding=False)
    assert isinstance(clip.model.visual.attnpool, AttentionPoolWithoutPositions) and clip.image_size is None
    assert clip.identity.endswith(":no-positional-embedding")
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        tiny_resnet_clip.visual.attnpool.positional_embedding.zero_()
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        expected = tiny_resnet_clip.encode_image(((images + 1) / 2 - mean) / std)
    assert torch.allclose(clip.encode_images(images), torch.nn.functional.normalize(expected), atol=1e-5)
    assert clip.encode_images(torch.rand(1, 3, 80, 112) * 2 - 1).shape == (1, 16)
    with pytest.raises(ValueError, match="positional_embedding=False needs clip_backend='open_clip' with a ResNet"):
        load_clip("open_clip", model="ViT-B-32", weights=tmp_path / "rn.pt", positional_embedding=False)
    with pytest.raises(ValueError, match="positional_embedding=False needs"):
        load_clip("tiny", positional_embedding=False)


def test_load_clip_reads_openai_torchscript_files(tmp_path, tiny_resnet_clip):
    """OpenAI's release files are TorchScript archives; open_clip rebuilds the model (QuickGELU) from them."""
    import copy
    import warnings

    source = copy.deepcopy(tiny_resnet_clip)
    del source._buffers["attn_mask"]  # open_clip keeps the text mask as a buffer; OpenAI's files do not
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation warnings
        torch.jit.trace_module(source, {"encode_image": torch.rand(1, 3, 64, 64)}).save(str(tmp_path / "openai.pt"))
        clip = load_clip(
            "open_clip", model="lc-test-tiny-rn", weights=tmp_path / "openai.pt", positional_embedding=False
        )
    weight = clip.model.visual.layer1[0].conv1.weight
    assert torch.equal(weight, tiny_resnet_clip.visual.layer1[0].conv1.weight.half().float())  # OpenAI's fp16 weights
    assert isinstance(clip.model.visual.attnpool, AttentionPoolWithoutPositions)
    assert clip.encode_images(torch.rand(2, 3, 48, 96) * 2 - 1).shape == (2, 16)
