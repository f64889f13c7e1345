"""Prompts to token ids and text-encoder states."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["encode_prompts", "tokenize_prompts"]


def tokenize_prompts(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids ``[B, model_max_length]`` (padded, truncated) for a list of prompts."""
    if isinstance(prompts, str):
        prompts = [prompts]
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str] | torch.Tensor) -> torch.Tensor:
    """Text-encoder hidden states ``[B, 77, D]`` for prompts (strings or token ids)."""
    ids = prompts if isinstance(prompts, torch.Tensor) else tokenize_prompts(tokenizer, prompts)
    return text_encoder(ids.to(text_encoder.device))[0]
