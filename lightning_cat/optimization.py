"""Optimisation shared by the training code: the learning-rate schedules, one manual step.

The schedules are diffusers' ``get_scheduler`` names; :func:`apply_gradients` is the step of the
plain-torch loops (CAT's, the protections' surrogates, CAAT).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

import torch

from lightning_cat.options import choices

if TYPE_CHECKING:
    from lightning_cat.protections.stash import OptimizerStateStash

__all__ = ["LR_SCHEDULES", "LRSchedule", "Optimizer", "adamw", "apply_gradients"]

#: Learning-rate schedules over a run's optimizer steps (diffusers' ``get_scheduler`` names).
LRSchedule = Literal["constant", "constant_with_warmup", "linear", "cosine"]
LR_SCHEDULES = choices(LRSchedule)
#: ``adamw`` (torch) or ``adamw_8bit`` (bitsandbytes' 8-bit AdamW, as Liu et al.'s DreamBooth runs).
Optimizer = Literal["adamw", "adamw_8bit"]


def adamw(groups: list[dict], optimizer: Optimizer = "adamw", fuse: bool = True, **options) -> torch.optim.Optimizer:
    """AdamW over parameter ``groups``: torch's, or bitsandbytes' 8-bit one (``pip install bitsandbytes``).

    ``fuse``: torch's AdamW runs its fused kernel where the parameters allow it (pass ``False``
    under fp16 AMP with gradient clipping: a fused optimizer unscales the gradients itself).

    Raises:
        ModuleNotFoundError: for ``adamw_8bit`` without bitsandbytes, naming the package.
        ValueError: for another optimizer name.
    """
    groups = [dict(group, params=list(group["params"])) for group in groups]
    if optimizer == "adamw":
        # torch's fused kernel (CPU and CUDA) updates every tensor in one call: on the testbed
        # model's 362 tensors 7 ms a step against 23 ms for the per-tensor loop torch uses on a CPU.
        options.setdefault("fused", fuse and _fusable(groups))
        return torch.optim.AdamW(groups, **options)
    if optimizer == "adamw_8bit":
        try:
            import bitsandbytes
        except ImportError as error:
            raise ModuleNotFoundError(
                "optimizer 'adamw_8bit' needs bitsandbytes: pip install bitsandbytes (or the project's adam8bit extra)"
            ) from error
        return bitsandbytes.optim.AdamW8bit(groups, **options)
    raise ValueError(f"optimizer={optimizer!r} is not one of {list(choices(Optimizer))}")


def _fusable(groups: list[dict]) -> bool:
    """Whether torch's fused AdamW takes these parameters: floating point, all on one device type
    that has the kernel (CPU or CUDA)."""
    params = [p for group in groups for p in group["params"]]
    devices = {p.device.type for p in params}
    return (
        bool(params) and len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)
    )


def apply_gradients(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    parameters: Iterable[torch.nn.Parameter] | None = None,
    max_grad_norm: float | None = None,
    step_in_turn: Sequence[Iterable[torch.nn.Parameter]] | None = None,
    state_stash: OptimizerStateStash | None = None,
) -> None:
    """One manual optimisation step: backward, optional clipping of ``parameters``, step, zero grad.

    ``step_in_turn``: sets of parameters (e.g. a UNet's, then a text encoder's) the optimizer
    updates one after the other, each set's gradients freed before the next set's update; put the
    set with the largest tensors last. The same update as one step (every parameter's update only
    reads its own gradient and state, and clipping is done first, over all of them), with a lower
    peak where the optimizer makes per-tensor temporaries (torch's per-tensor AdamW,
    bitsandbytes' 8-bit AdamW on a CPU: about four fp32 copies of the tensor it updates).
    ``state_stash``: an :class:`~lightning_cat.protections.stash.OptimizerStateStash` that holds the
    optimizer's states between steps: each set's states come back just before its update and leave
    right after it (so the forward and backward passes run without them).

    Raises:
        FloatingPointError: if the loss is not finite (nothing is updated).
    """
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()}; stopping before the weights are corrupted")
    loss.backward()
    if max_grad_norm is not None:
        if parameters is None:
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(list(parameters), max_grad_norm)
    if step_in_turn is None and state_stash is None:
        optimizer.step()
    else:
        groups = step_in_turn or [[p for group in optimizer.param_groups for p in group["params"]]]
        _step_in_turn(optimizer, [list(group) for group in groups], state_stash)
    optimizer.zero_grad(set_to_none=True)


def _step_in_turn(
    optimizer: torch.optim.Optimizer, groups: list[list[torch.nn.Parameter]], state_stash: OptimizerStateStash | None
) -> None:
    """``optimizer.step()`` once per group of parameters: the others' gradients are held aside
    (optimizers skip parameters without a gradient) and each group's are freed after its update."""
    held = [[parameter.grad for parameter in group] for group in groups]
    for group in groups:
        for parameter in group:
            parameter.grad = None
    for group in groups:
        gradients = held.pop(0)
        for parameter, gradient in zip(group, gradients, strict=True):
            parameter.grad = gradient
        del gradients
        if state_stash is not None:
            state_stash.take(optimizer, group)
        optimizer.step()
        for parameter in group:
            parameter.grad = None
        if state_stash is not None:
            state_stash.put(optimizer, group)
