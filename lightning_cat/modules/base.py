"""The template every LightningModule of the library follows, and its Stable Diffusion variant.

As torchgeo's ``BaseTask``: a module declares its options once, as a flat, typed, defaulted
``__init__`` signature (the config schema; ``Literal`` choices come from the algorithm packages)
whose body is only ``super().__init__()``. The template then

1. saves every argument as a hyperparameter (read back through ``self.hparams``);
2. checks them against the signature (:func:`lightning_cat.options.check_arguments`) and the
   rules of shared options (:data:`SHARED_OPTION_RULES`), then runs
   :meth:`LightningCatModule.check_options` (the module's own ranges, files, rules between
   options), so bad input fails before anything is loaded;
3. calls :meth:`LightningCatModule.configure_models` to load or build what the module runs.

Subclass a module and override one hook (``check_options``, ``configure_models``, a step) to
change it; the plain-torch algorithm stays in its package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule

from lightning_cat.diffusion import DiffusionComponents, check_model_name, load_components, weight_dtype
from lightning_cat.options import check_arguments

__all__ = [
    "RNG_STATES_KEY",
    "SHARED_OPTION_RULES",
    "DiffusionModule",
    "LightningCatModule",
    "restore_rng_states",
    "rng_states",
]

#: The rules of options several modules take: one name per concept across modules, so one rule.
SHARED_OPTION_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lora_rank": (lambda v: v >= 1, ">= 1"),
    "lora_dropout": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "learning_rate": (lambda v: v > 0, "> 0"),
    "adam_beta1": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "adam_beta2": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "adam_epsilon": (lambda v: v > 0, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
}


class LightningCatModule(LightningModule):
    """Base of every module: save the hyperparameters, check them, configure the models.

    Args:
        ignore: init arguments not saved as hyperparameters (objects, e.g. a purifier).
    """

    def __init__(self, ignore: Sequence[str] = ()) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=list(ignore))
        check_arguments(type(self).__name__, type(self).__init__, self.hparams)
        for option, (holds, requirement) in SHARED_OPTION_RULES.items():
            if option in self.hparams and not holds(self.hparams[option]):
                self.fail(option, requirement)
        self.check_options()
        self.configure_models()

    def check_options(self) -> None:
        """Rules the signature cannot state (ranges, files, options that go together); raise ``ValueError``."""

    def configure_models(self) -> None:
        """Load or build the models the module runs."""

    @property
    def fuse_optimizer(self) -> bool:
        """Whether the optimizer may be torch's fused one: not under fp16 AMP's gradient scaler, whose
        unscaling a fused optimizer does itself (Lightning then refuses gradient clipping)."""
        if self._trainer is None:
            return True
        return getattr(self.trainer.precision_plugin, "scaler", None) is None

    def fail(self, option: str, requirement: str, value: Any = None) -> None:
        """Raise ``ValueError("{Class}: {option} must be {requirement}, got {value!r}")``."""
        value = self.hparams.get(option) if value is None else value
        raise ValueError(f"{type(self).__name__}: {option} must be {requirement}, got {value!r}")


class DiffusionModule(LightningCatModule):
    """A module built on a Stable Diffusion checkpoint (``pretrained_model_name_or_path``, ``revision``,
    ``variant`` in its signature) that keeps frozen weights out of the way.

    :meth:`load_pretrained` makes each requested part an attribute (``self.unet``, ``self.vae``,
    ...) and freezes it. Then:

    * under ``*-mixed`` precision, frozen weights are cast to the half dtype at ``setup`` while
      trainable ones (LoRA, fine-tuned layers) stay fp32, as the diffusers training scripts do;
    * checkpoints hold only trainable weights and everything that is not a pretrained part (the
      frozen ones reload from ``pretrained_model_name_or_path``), plus the RNG states; loading one
      that lacks a trainable weight fails.
    """

    #: Attributes holding frozen pretrained weights (left out of checkpoints).
    pretrained_parts: tuple[str, ...] = ()

    def __init__(self, ignore: Sequence[str] = ()) -> None:
        super().__init__(ignore)
        self.strict_loading = False  # frozen pretrained weights are not in checkpoints

    @property
    def pretrained_model_name_or_path(self) -> str:
        return self.hparams.pretrained_model_name_or_path

    @property
    def revision(self) -> str | None:
        return self.hparams.get("revision")

    @property
    def variant(self) -> str | None:
        return self.hparams.get("variant")

    def check_options(self) -> None:
        check_model_name(self.pretrained_model_name_or_path)  # cheap: a bad or removed name fails here

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
        self.add_pretrained_parts(*parts)
        return components

    def add_pretrained_parts(self, *parts: str) -> None:
        """Mark attributes as pretrained parts (frozen weights that checkpoints leave out)."""
        self.pretrained_parts = tuple(dict.fromkeys(self.pretrained_parts + parts))

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

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable weights (frozen pretrained parts reload from the model) and add the RNG
        states, so a resumed run draws the noise the uninterrupted one would have drawn."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        prefixes = tuple(f"{part}." for part in self.pretrained_parts)
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(prefixes) and k not in trainable]:
            del state[key]
        checkpoint[RNG_STATES_KEY] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint that lacks a trainable weight (``strict_loading`` is off for the frozen
        ones); restore the RNG states it holds.

        Raises:
            KeyError: naming the trainable weights the checkpoint does not hold.
        """
        missing = [
            name for name, p in self.named_parameters() if p.requires_grad and name not in checkpoint["state_dict"]
        ]
        if missing:
            raise KeyError(
                f"{type(self).__name__}: the checkpoint lacks {len(missing)} trainable weights "
                f"(e.g. {missing[:3]}); was it saved with other options (lora_rank, finetune, adapter_variant)?"
            )
        if RNG_STATES_KEY in checkpoint:
            restore_rng_states(checkpoint[RNG_STATES_KEY])


#: Checkpoint entry holding the torch RNG states (plain tensors: loadable with ``weights_only=True``).
RNG_STATES_KEY = "lightning_cat_rng_states"


def rng_states() -> dict[str, Any]:
    """The torch CPU and CUDA generator states, as tensors."""
    states: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the generators to ``states`` (from :func:`rng_states`); CUDA states only where CUDA runs."""
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
