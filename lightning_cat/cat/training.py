"""Training CAT adapters in plain torch: optimizer and schedule, per-image latent noise, a loop.

:class:`lightning_cat.modules.CATAdapterModule` runs the same objective, optimizer and schedule
under the Lightning Trainer; :func:`train_cat_adapter` is the Trainer-free loop that the fidelity
study and the benchmarks use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from lightning_cat.cat.adapter import CATVariant, LoraInit, add_cat_adapter, cat_lora_config
from lightning_cat.cat.loss import CATLoss
from lightning_cat.optimization import LR_SCHEDULES, LRSchedule, Optimizer, adamw, apply_gradients
from lightning_cat.seeding import derive_seed

__all__ = ["cat_optimizer", "per_image_noise", "train_cat_adapter"]


def cat_optimizer(
    parameters: Iterable[torch.nn.Parameter],
    num_steps: int,
    learning_rate: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 1e-2,
    lr_scheduler: LRSchedule = "cosine",
    optimizer: Optimizer = "adamw",
    fuse: bool = True,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW and its per-step schedule with CAT's reference defaults (cosine to 0, no warmup).

    ``optimizer``: torch's ``adamw`` (the reference) or bitsandbytes' ``adamw_8bit``
    (:func:`lightning_cat.optimization.adamw`, which also takes ``fuse``).

    Raises:
        ValueError: for an unknown ``lr_scheduler`` or optimizer, or ``num_steps < 1``.
        ModuleNotFoundError: for ``adamw_8bit`` without bitsandbytes.
    """
    from diffusers.optimization import get_scheduler

    if lr_scheduler not in LR_SCHEDULES:
        raise ValueError(f"cat_optimizer: lr_scheduler={lr_scheduler!r} is not one of {list(LR_SCHEDULES)}")
    if num_steps < 1:
        raise ValueError(f"cat_optimizer: num_steps must be >= 1, got {num_steps}")
    groups = [{"params": list(parameters)}]
    adam = adamw(groups, optimizer, fuse=fuse, lr=learning_rate, betas=tuple(betas), weight_decay=weight_decay)
    scheduler = get_scheduler(lr_scheduler, adam, num_warmup_steps=0, num_training_steps=num_steps)
    return adam, scheduler


def per_image_noise(shape: Sequence[int], indices: Sequence[int] | torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """Standard normal noise ``[len(indices), *shape]``, drawn per (seed, step, image index).

    The draw of an image does not depend on which batch or process it lands in, so a run on N
    DDP processes samples the same latents as a single-process run.
    """
    indices = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
    draws = [
        torch.randn(
            tuple(shape), generator=torch.Generator().manual_seed(derive_seed(int(seed), int(step), int(index)))
        )
        for index in indices
    ]
    return torch.stack(draws)


def train_cat_adapter(
    vae,
    images: torch.Tensor,
    *,
    adapter_variant: CATVariant = "both",
    rank: int = 128,
    alpha: float | None = None,
    init: LoraInit = "gaussian",
    steps: int = 10_000,
    batch_size: int = 4,
    learning_rate: float = 1e-4,
    weight_decay: float = 1e-2,
    lr_scheduler: LRSchedule = "cosine",
    max_grad_norm: float | None = None,
    loss: CATLoss | None = None,
    seed: int = 0,
    progress: bool = False,
):
    """Train a CAT adapter on ``images`` (the PROTECTED set) with a plain torch loop.

    Batches are drawn by shuffling the set each pass (seeded); posterior samples use
    :func:`per_image_noise`, as in the Lightning module.

    Args:
        vae: the frozen ``AutoencoderKL``; it is wrapped, not copied (pass a fresh copy to keep
            the base model unchanged: peft injects the LoRA layers in place).
        images: ``[N, 3, H, W]`` in ``[-1, 1]`` on the VAE's device.
        adapter_variant, rank, alpha, init: see :func:`lightning_cat.cat.adapter.cat_lora_config`.
        steps, batch_size, learning_rate, weight_decay, lr_scheduler, max_grad_norm: optimisation.
        loss: the objective (default: squared error, the released CAT objective).
        seed: seed of the LoRA init, the batch order and the latent noise.
        progress: show a progress bar.

    Returns:
        The trained ``PeftModel`` in eval mode.
    """
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"train_cat_adapter: images must be a non-empty [N, 3, H, W] batch, got {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"train_cat_adapter: batch_size must be >= 1, got {batch_size}")
    loss = loss if loss is not None else CATLoss("mse")
    vae.eval()  # frozen layers in eval mode, new LoRA layers in train mode, as under CATAdapterModule
    with torch.random.fork_rng(devices=[]):  # seeded LoRA init, global RNG left as it was
        torch.manual_seed(seed)
        model = add_cat_adapter(vae, cat_lora_config(adapter_variant, rank=rank, alpha=alpha, init=init))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = cat_optimizer(
        trainable, steps, learning_rate, weight_decay=weight_decay, lr_scheduler=lr_scheduler
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latent_shape = model.encode(images[:1]).latent_dist.mean.shape[1:]
    order: list[int] = []
    for step in tqdm(range(steps), desc=f"CAT {adapter_variant}", disable=not progress):
        while len(order) < batch_size:
            order += torch.randperm(images.shape[0], generator=generator).tolist()
        indices, order = order[:batch_size], order[batch_size:]
        noise = per_image_noise(latent_shape, indices, seed, step).to(images.device)
        output = loss(model, images[indices], noise)
        apply_gradients(output.loss, optimizer, trainable, max_grad_norm)
        scheduler.step()
    return model.eval()
