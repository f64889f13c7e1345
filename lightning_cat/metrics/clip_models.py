"""CLIP image and text encoders behind one interface, loaded from local files only.

Three sources, chosen with ``backend``:

* ``open_clip``: an open_clip architecture name (``ViT-L-14``, ...) plus a local checkpoint file;
* ``transformers``: a local folder holding a ``transformers`` ``CLIPModel`` and its tokenizer;
* ``tiny``: a small random CLIP built in memory from a fixed seed, with the real CLIP tokenizer
  (open_clip's shipped BPE table). Its scores mean nothing; it makes tests and tiny configs run.

Example::

    clip = load_clip("open_clip", model="ViT-L-14", weights="weights/ViT-L-14.pt")
    image_embeddings = clip.encode_images(images)  # [B, D], unit norm; images in [-1, 1]
    text_embeddings = clip.encode_texts(["Good photo.", "Bad photo."])

CLIP-IQA's original backbone (torchmetrics' ``"clip_iqa"`` model, from piq): OpenAI's CLIP RN50
whose attention pool skips the positional embedding, so any input size works and images are not
resized, only normalized with CLIP's mean/std::

    clip = load_clip("open_clip", model="RN50", weights="weights/RN50.pt", positional_embedding=False)

``weights`` may be OpenAI's TorchScript release file (``RN50.pt``; the architecture, with QuickGELU,
is read from the file) or an open_clip state dict (then name ``RN50-quickgelu`` for OpenAI's weights).

Nothing is downloaded: a missing file fails with an error naming ``clip_weights``.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AttentionPoolWithoutPositions",
    "CLIPBackend",
    "CLIP_BACKENDS",
    "CLIPEncoder",
    "build_tiny_clip",
    "load_clip",
    "load_shared_clip",
    "without_positional_embedding",
]

#: Where a CLIP comes from: an open_clip checkpoint, a transformers CLIP folder, or the offline tiny random CLIP.
CLIPBackend = Literal["open_clip", "transformers", "tiny"]

CLIP_BACKENDS = ("open_clip", "transformers", "tiny")
# OpenAI CLIP's pixel statistics (used when a model states none).
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_TINY_SEED = 0


class CLIPEncoder(nn.Module):
    """A frozen CLIP model: unit-norm image and text embeddings from library-format inputs.

    Images are float ``[B, 3, H, W]`` in ``[-1, 1]`` of any size: they are resized (shorter side,
    bicubic with antialiasing), center-cropped to the model's input size and normalized with the
    model's pixel statistics, in float32. With ``image_size=None`` (a model that takes any size,
    e.g. :func:`without_positional_embedding`) they are only normalized.

    Args:
        backend: where the model came from (``open_clip``, ``transformers`` or ``tiny``).
        model: the wrapped model.
        tokenizer: callable turning a list of strings into the model's text input.
        image_size: side of the model's square input; ``None``: no resizing or cropping.
        mean: per-channel pixel mean of the model's preprocessing.
        std: per-channel pixel std of the model's preprocessing.
        identity: a string naming the model and its weights (used in cache keys and reports).
    """

    def __init__(
        self,
        backend: str,
        model: nn.Module,
        tokenizer,
        image_size: int | None,
        mean: Sequence[float] = _CLIP_MEAN,
        std: Sequence[float] = _CLIP_STD,
        identity: str = "",
    ) -> None:
        super().__init__()
        self.backend = backend
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = None if image_size is None else int(image_size)
        self.identity = identity or backend
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> CLIPEncoder:
        return super().train(False)  # always an evaluator

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in ``[-1, 1]`` -> normalized ``[B, 3, S, S]`` model input (``[B, 3, H, W]`` without a size)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"CLIPEncoder expects images [B, 3, H, W], got shape {tuple(images.shape)}")
        pixels = (images.float() + 1.0) / 2.0
        if self.image_size is None:
            return (pixels.clamp(0.0, 1.0) - self.mean) / self.std
        height, width = pixels.shape[-2:]
        scale = self.image_size / min(height, width)
        size = (max(self.image_size, round(height * scale)), max(self.image_size, round(width * scale)))
        if size != (height, width):
            pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        pixels = pixels[..., top : top + self.image_size, left : left + self.image_size].clamp(0.0, 1.0)
        return (pixels - self.mean) / self.std

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings ``[B, D]`` (float32)."""
        pixels = self.preprocess(images.to(self.device))
        with torch.autocast(self.device.type, enabled=False):
            if self.backend == "transformers":
                features = _pooled(self.model.get_image_features(pixel_values=pixels))
            else:
                features = self.model.encode_image(pixels)
        return F.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``[T, D]`` (float32)."""
        texts = list(texts)
        with torch.autocast(self.device.type, enabled=False):
            if self.backend == "transformers":
                tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
                tokens = {key: value.to(self.device) for key, value in tokens.items()}
                features = _pooled(self.model.get_text_features(**tokens))
            else:
                features = self.model.encode_text(self.tokenizer(texts).to(self.device))
        return F.normalize(features.float(), dim=-1)


def _pooled(output) -> torch.Tensor:
    # transformers 5 returns a ModelOutput whose pooler_output holds the projected embedding.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class AttentionPoolWithoutPositions(nn.Module):
    """open_clip's ModifiedResNet attention pool without its positional embedding (CLIP-IQA's backbone).

    The same computation as ``open_clip.modified_resnet.AttentionPool2d`` (query: the mean token;
    keys and values: the mean and every spatial token) minus the added positional embedding, so
    feature maps of any size work. Shares the wrapped pool's weights.

    Args:
        pool: the ``AttentionPool2d`` to wrap.
    """

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = self.pool
        x = x.flatten(2).permute(2, 0, 1)  # NCHW -> (HW)NC
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)  # (HW+1)NC, no positional embedding
        x, _ = F.multi_head_attention_forward(
            query=x[:1],
            key=x,
            value=x,
            embed_dim_to_check=x.shape[-1],
            num_heads=pool.num_heads,
            q_proj_weight=pool.q_proj.weight,
            k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=pool.c_proj.weight,
            out_proj_bias=pool.c_proj.bias,
            use_separate_proj_weight=True,
            training=False,
            need_weights=False,
        )
        return x[0]


def without_positional_embedding(model: nn.Module) -> nn.Module:
    """Make an open_clip ResNet CLIP (``RN50``, ...) pool without positional embedding, in place.

    Raises:
        ValueError: if ``model.visual`` has no attention pool (a ViT or another tower).
    """
    visual = getattr(model, "visual", None)
    pool = getattr(visual, "attnpool", None)
    if pool is None or not hasattr(pool, "positional_embedding"):
        raise ValueError(
            "positional_embedding=False needs an open_clip ResNet CLIP (clip_model='RN50', 'RN101', ...), "
            f"got a {type(visual).__name__} image tower"
        )
    if not isinstance(pool, AttentionPoolWithoutPositions):
        visual.attnpool = AttentionPoolWithoutPositions(pool)
    return model


def build_tiny_clip(embed_dim: int = 32, image_size: int = 32) -> CLIPEncoder:
    """A small random open_clip CLIP (seeded, identical on every call) with the real tokenizer."""
    import open_clip

    vision = open_clip.model.CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=image_size)
    text = open_clip.model.CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        model = open_clip.CLIP(embed_dim=embed_dim, vision_cfg=vision, text_cfg=text)
    tokenizer = open_clip.SimpleTokenizer(context_length=77)
    identity = f"tiny-clip-seed{_TINY_SEED}-d{embed_dim}-s{image_size}"
    return CLIPEncoder("tiny", model, tokenizer, image_size, identity=identity)


def load_clip(
    backend: CLIPBackend = "open_clip",
    model: str = "ViT-L-14",
    weights: str | os.PathLike | None = None,
    positional_embedding: bool = True,
) -> CLIPEncoder:
    """Load a frozen CLIP from local files.

    Args:
        backend: ``open_clip``, ``transformers`` or ``tiny`` (see the module docstring).
        model: open_clip architecture name (``open_clip``); ignored otherwise.
        weights: local open_clip checkpoint file or OpenAI TorchScript file (``open_clip``), or local
            ``CLIPModel`` folder (``transformers``); ignored for ``tiny``.
        positional_embedding: ``False``: CLIP-IQA's variant of a ResNet CLIP (``open_clip`` only):
            the attention pool skips its positional embedding and images keep their size.

    Raises:
        ValueError: for an unknown backend or architecture, when ``weights`` is not given, or for
            ``positional_embedding=False`` with anything but an open_clip ResNet.
        FileNotFoundError: when ``weights`` does not exist.
    """
    if backend not in CLIP_BACKENDS:
        raise ValueError(f"load_clip: unknown clip_backend {backend!r}; choose one of {list(CLIP_BACKENDS)}")
    if not positional_embedding:
        _check_resnet_architecture(backend, model)
    if backend == "tiny":
        return build_tiny_clip()
    if weights is None:
        what = "an open_clip checkpoint file" if backend == "open_clip" else "a transformers CLIPModel folder"
        raise ValueError(
            f"CLIP ({backend}) needs local weights: set clip_weights to {what} (nothing is downloaded), "
            "or clip_backend='tiny' for a random test model"
        )
    path = Path(weights).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"clip_weights '{path}' does not exist")
    if backend == "open_clip":
        return _load_open_clip(model, path, positional_embedding)
    return _load_transformers_clip(path)


def _check_resnet_architecture(backend: str, name: str) -> None:
    """Fail before loading anything when ``positional_embedding=False`` cannot apply."""
    import open_clip

    config = open_clip.get_model_config(name) if backend == "open_clip" else None
    if config is None or not isinstance(config.get("vision_cfg", {}).get("layers"), (list, tuple)):
        raise ValueError(
            "positional_embedding=False needs clip_backend='open_clip' with a ResNet clip_model ('RN50', 'RN101', "
            f"'RN50-quickgelu', ...), got clip_backend={backend!r}, clip_model={name!r}"
        )


def _is_torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (OpenAI's CLIP release format), not a state dict."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def _load_open_clip(name: str, path: Path, positional_embedding: bool = True) -> CLIPEncoder:
    import open_clip

    if name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture clip_model={name!r}; see open_clip.list_models()")
    if not path.is_file():
        raise FileNotFoundError(f"clip_weights '{path}' is not a file (open_clip wants a checkpoint file)")
    if _is_torchscript_archive(path):  # OpenAI's file: open_clip rebuilds the architecture from its weights
        model = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
    else:
        model = open_clip.create_model(name, pretrained=str(path), pretrained_image=False, pretrained_text=False)
    config = open_clip.get_model_preprocess_cfg(model)
    size = config.get("size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    identity = f"open_clip:{name}:{path.resolve()}"
    if not positional_embedding:
        model, size, identity = without_positional_embedding(model), None, f"{identity}:no-positional-embedding"
    return CLIPEncoder(
        "open_clip",
        model,
        open_clip.get_tokenizer(name),
        size,
        mean=config.get("mean", _CLIP_MEAN),
        std=config.get("std", _CLIP_STD),
        identity=identity,
    )


def _load_transformers_clip(path: Path) -> CLIPEncoder:
    import json

    from transformers import CLIPModel, CLIPTokenizer

    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"clip_weights '{path}' is not a transformers CLIPModel folder (no config.json)")
    model = CLIPModel.from_pretrained(path, local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
    mean, std = _CLIP_MEAN, _CLIP_STD
    processor = path / "preprocessor_config.json"
    if processor.is_file():
        config = json.loads(processor.read_text())
        mean, std = config.get("image_mean", mean), config.get("image_std", std)
    return CLIPEncoder(
        "transformers",
        model,
        tokenizer,
        model.config.vision_config.image_size,
        mean=mean,
        std=std,
        identity=f"transformers:{path.resolve()}",
    )


_SHARED: dict[tuple[str, str, str, bool], CLIPEncoder] = {}


def load_shared_clip(
    backend: CLIPBackend = "open_clip",
    model: str = "ViT-L-14",
    weights: str | os.PathLike | None = None,
    positional_embedding: bool = True,
) -> CLIPEncoder:
    """:func:`load_clip`, but one instance per (backend, model, weights, positional_embedding) per process.

    Evaluators that need the same CLIP (CLIP-IQA on generated images, CLIP alignment on protected
    ones) share it instead of holding two copies of a large model.
    """
    name = model if backend == "open_clip" else ""
    key = (backend, name, str(Path(weights).resolve()) if weights else "", positional_embedding)
    if key not in _SHARED:
        _SHARED[key] = load_clip(backend, model, weights, positional_embedding)
    return _SHARED[key]
