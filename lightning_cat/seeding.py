"""The determinism contract: randomness is drawn per item from a seed derived from its name.

A seed is a hash of ``(base seed, purpose, item name)`` (or of any parts), never a position in
a batch, so an image's result depends only on its own seed and name: one process or N DDP
ranks, any batch size, any order give the same outputs. Every per-image (or per-step) seed in
the library comes from :func:`derive_seed`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

__all__ = ["derive_seed", "image_generator", "image_generators", "image_seed"]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (a hash of their ``:``-joined text), stable across processes and runs."""
    digest = hashlib.sha256(":".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def image_seed(seed: int, key: str, purpose: str = "protect") -> int:
    """The seed of image ``key`` (its file stem) for ``purpose`` (``protect``, ``purify``, ...)."""
    return derive_seed(int(seed), purpose, key)


def image_generator(seed: int, key: str, purpose: str = "protect") -> torch.Generator:
    """A CPU generator seeded with :func:`image_seed` (callers move draws to their device)."""
    return torch.Generator().manual_seed(image_seed(seed, key, purpose))


def image_generators(seed: int, keys: Sequence[str], purpose: str = "protect") -> list[torch.Generator]:
    """One generator per image (:func:`image_generator`)."""
    return [image_generator(seed, str(key), purpose) for key in keys]
