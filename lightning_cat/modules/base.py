"""Base LightningModule for everything built on a Stable Diffusion checkpoint."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule

from lightning_cat.diffusion import DiffusionComponents, check_model_name, load_components, weight_dtype

__all__ = ["DiffusionModule"]


class DiffusionModule(LightningModule):
    """Loads Stable Diffusion parts by name or path and keeps frozen weights out of the way.

    Subclasses call :meth:`load_pretrained` in ``__init__`` with the parts they need; each part
    becomes an attribute (``self.unet``, ``self.vae``, ...) and is frozen. Then:

    * under ``*-mixed`` precision, frozen weights are cast to the half dtype at ``setup`` while
      trainable ones (LoRA, fine-tuned layers) stay fp32, as the diffusers training scripts do;
    * checkpoints hold only trainable weights and everything that is not a pretrained part; the
      frozen ones reload from ``pretrained_model_name_or_path``.

    Args:
        pretrained_model_name_or_path: a diffusers folder, a hub id, or ``tiny`` / ``tiny-v``.
        revision: hub revision.
        variant: weight variant (e.g. ``fp16``).
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str = "tiny",
        revision: str | None = None,
        variant: str | None = None,
    ) -> None:
        super().__init__()
        check_model_name(pretrained_model_name_or_path)  # cheap: a bad or removed name fails before any work
        self.pretrained_model_name_or_path = pretrained_model_name_or_path
        self.revision = revision
        self.variant = variant
        self.pretrained_parts: tuple[str, ...] = ()
        self.strict_loading = False  # frozen pretrained weights are not in checkpoints

    def load_pretrained(self, *parts: str) -> DiffusionComponents:
        """Load ``parts`` (see ``lightning_cat.diffusion.COMPONENTS``) as frozen attributes."""
        components = load_components(
            self.pretrained_model_name_or_path, revision=self.revision, variant=self.variant, parts=parts
        )
        for part in parts:
            value = getattr(components, part)
            if isinstance(value, torch.nn.Module):
                value.requires_grad_(False).eval()
            setattr(self, part, value)
        self.pretrained_parts = tuple(dict.fromkeys(self.pretrained_parts + parts))
        return components

    @property
    def frozen_dtype(self) -> torch.dtype:
        """dtype of frozen weights under the attached trainer's precision (fp32 without one)."""
        trainer = self._trainer
        return weight_dtype(trainer.precision) if trainer is not None else torch.float32

    def cast_frozen_weights(self, dtype: torch.dtype | None = None) -> None:
        """Cast parameters that do not require grad to ``dtype`` (default :attr:`frozen_dtype`)."""
        dtype = dtype or self.frozen_dtype
        for parameter in self.parameters():
            if not parameter.requires_grad and parameter.is_floating_point():
                parameter.data = parameter.data.to(dtype)

    def setup(self, stage: str) -> None:
        if str(self.trainer.precision).endswith("-mixed"):
            self.cast_frozen_weights()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        prefixes = tuple(f"{part}." for part in self.pretrained_parts)
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(prefixes) and k not in trainable]:
            del state[key]
