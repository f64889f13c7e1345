"""One manual optimisation step, shared by the plain-torch training loops (CAT, surrogates, CAAT)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["apply_gradients"]


def apply_gradients(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    parameters: Iterable[torch.nn.Parameter] | None = None,
    max_grad_norm: float | None = None,
) -> None:
    """One manual optimisation step: backward, optional clipping of ``parameters``, step, zero grad.

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
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
