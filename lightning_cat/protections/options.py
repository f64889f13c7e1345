"""Option checking shared by every protection: one rule per option name, errors that name it.

Checks here run before any model loads (the module resolves its options in ``__init__``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from lightning_cat.optimization import Optimizer
from lightning_cat.options import choices
from lightning_cat.perceptual import LPIPS_NETS
from lightning_cat.protections.pgd import NORMS, STEP_SCHEDULES, check_budget
from lightning_cat.protections.stash import STASH_LOCATIONS

__all__ = ["EOT_TRANSFORMS", "OPTION_RULES", "EOTTransform", "SurrogateDtype", "SurrogateInputRange", "resolve_options"]

#: Transformations MetaCloak takes its expectation over.
EOTTransform = Literal["resize_crop", "gaussian_blur", "hflip"]
EOT_TRANSFORMS = choices(EOTTransform)
#: Weights of a trained surrogate: ``float32`` (the intended algorithm) or ``bfloat16`` (what the
#: reference ASPL / MetaCloak scripts do: at lr 5e-7 most bf16 weights never change).
SurrogateDtype = Literal["float32", "bfloat16"]
#: How MetaCloak's surrogate training steps see the instance images: ``unit`` ([-1, 1], the intended
#: algorithm) or ``0-255`` (what the reference feeds them, unnormalised).
SurrogateInputRange = Literal["unit", "0-255"]


def _number(minimum: float | None = None, maximum: float | None = None, *, strict_min: bool = False):
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "a number"
        if minimum is not None and (value <= minimum if strict_min else value < minimum):
            return f"a number {'>' if strict_min else '>='} {minimum}"
        if maximum is not None and value > maximum:
            return f"a number <= {maximum}"
        return None

    return check


def _integer(minimum: int):
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            return f"an integer >= {minimum}"
        return None

    return check


def _choice(allowed: tuple[str, ...]):
    def check(value: Any) -> str | None:
        return None if value in allowed else f"one of {list(allowed)}"

    return check


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "a non-empty string"


def _optional_file(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | Path) or not Path(value).expanduser().is_file():
        return "an existing image file (or null)"
    return None


def _timestep_range(value: Any) -> str | None:
    if value is None:
        return None
    ok = (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and 0 <= value[0] < value[1]
    )
    return None if ok else "null or [low, high] with integers 0 <= low < high (timesteps uniform on [low, high))"


def _optional_positive(value: Any) -> str | None:
    return None if value is None else _number(0, strict_min=True)(value)


def _transforms(value: Any) -> str | None:
    if isinstance(value, list | tuple) and all(v in EOT_TRANSFORMS for v in value) and len(set(value)) == len(value):
        return None
    return f"a list of distinct entries of {list(EOT_TRANSFORMS)}"


def _odd_kernel(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 3 or value % 2 == 0:
        return "an odd integer >= 3"
    return None


#: The rule of every option any method takes; returns what the value should be, or None if fine.
OPTION_RULES: dict[str, Callable[[Any], str | None]] = {
    # PGD (eps_255 / alpha_255 / steps also go through check_budget)
    "eps_255": _number(0, 255, strict_min=True),
    "alpha_255": _number(0, strict_min=True),
    "steps": _integer(1),
    "norm": _choice(NORMS),
    "random_start": _boolean,
    "step_schedule": _choice(STEP_SCHEDULES),
    "final_step_fraction": _number(0, 1),
    "gradient_checkpointing": _boolean,
    # diffusion objectives
    "prompt": _text,
    "timestep_range": _timestep_range,
    "num_noise_draws": _integer(1),
    # targets
    "target_image": _optional_file,
    "semantic_weight": _number(0),
    "sds_weight": _number(0),
    # Glaze-style cloaking
    "style_prompt": _text,
    "style_strength": _number(0, 1, strict_min=True),
    "style_steps": _integer(1),
    "style_guidance": _number(0),
    "lpips_budget": _number(0),
    "lpips_weight": _number(0),
    "lpips_net": _choice(LPIPS_NETS),
    "lpips_backbone_weights": _optional_file,
    "lpips_random_backbone": _boolean,
    # surrogates
    "class_prompt": _text,
    "surrogate_lr": _number(0, strict_min=True),
    "surrogate_batch_size": _integer(1),
    "surrogate_pretrain_steps": _integer(0),
    "surrogate_steps": _integer(0),
    "prior_loss_weight": _number(0),
    "max_grad_norm": _optional_positive,
    "train_text_encoder": _boolean,
    "surrogate_dtype": _choice(choices(SurrogateDtype)),
    "surrogate_optimizer": _choice(choices(Optimizer)),
    "surrogate_input_range": _choice(choices(SurrogateInputRange)),
    "iterations": _integer(1),
    "optimizer_state_stash": _choice(STASH_LOCATIONS),
    "theta_stash": _choice(STASH_LOCATIONS),
    "pool_stash": _choice(STASH_LOCATIONS),
    # MetaCloak
    "rounds": _integer(1),
    "pool_size": _integer(1),
    "pool_interval": _integer(1),
    "cycles_per_snapshot": _integer(1),
    "eot_samples": _integer(1),
    "eot_transforms": _transforms,
    "blur_kernel_size": _odd_kernel,
    "crop_scale": _number(0, 1, strict_min=True),
}


def resolve_options(method: str, defaults: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated with the non-``None`` entries of ``options``, every value checked.

    Raises:
        ValueError: naming the method, the option and what it accepts.
    """
    unknown = sorted(key for key, value in options.items() if key not in defaults and value is not None)
    if unknown:
        raise ValueError(
            f"protection method {method!r} does not take option(s) {unknown}; its options are {sorted(defaults)}"
        )
    resolved = copy.deepcopy(defaults)
    resolved.update({key: value for key, value in options.items() if value is not None and key in defaults})
    for key, value in resolved.items():
        if isinstance(value, tuple):
            resolved[key] = list(value)
        rule = OPTION_RULES.get(key)
        problem = rule(resolved[key]) if rule is not None else None
        if problem is not None:
            raise ValueError(f"protection method {method!r}: {key} must be {problem}, got {resolved[key]!r}")
    check_budget(resolved["eps_255"], resolved["alpha_255"], resolved["steps"], owner=f"protection method {method!r}")
    if resolved.get("target_image") is not None:
        resolved["target_image"] = str(resolved["target_image"])
    return resolved
