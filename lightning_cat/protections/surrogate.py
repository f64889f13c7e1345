"""Surrogate models that coupled protections (FSMG, ASPL, MetaCloak, CAAT) fine-tune.

A :class:`Surrogate` holds a UNet (and optionally a text encoder) whose weights are allocated
once: copies are made at construction (or the given modules are trained in place), and later
refreshes go through ``load_state_dict`` into the same storage, never through a per-iteration
``deepcopy`` (the memory hot spot of the reference ASPL). Training steps are the foundation's
DreamBooth step: :func:`~lightning_cat.diffusion.dreambooth_loss` + :func:`~lightning_cat.diffusion.apply_gradients`.

Images are encoded once per call into :class:`~lightning_cat.diffusion.LatentDistribution` s
(the clean set and the class-prior set only once per run) and instance rows are taken from the
set in order, continuing where the previous call stopped.
"""

from __future__ import annotations

import contextlib
import copy as copy_module
import warnings
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal

import torch

from lightning_cat.customization import dreambooth_loss
from lightning_cat.diffusion import LatentDistribution, latent_distribution, scale_latents, tokenize_prompts
from lightning_cat.optimization import Optimizer, adamw, apply_gradients
from lightning_cat.protections.base import DiffusionObjective, Objective, Protection, SurrogateData
from lightning_cat.protections.stash import STASH_LOCATIONS, OptimizerStateStash, StashLocation
from lightning_cat.seeding import image_seed

__all__ = ["SURROGATE_DEFAULTS", "Surrogate", "SurrogateProtection", "cross_attention_kv_parameters", "step_sets"]

#: Options every surrogate-training method takes (Anti-DreamBooth reference values).
SURROGATE_DEFAULTS: dict[str, Any] = {
    "prompt": "a photo of sks person",
    "class_prompt": "a photo of person",
    "surrogate_lr": 5e-7,
    "surrogate_batch_size": 1,
    "prior_loss_weight": 1.0,
    "max_grad_norm": 1.0,
    "train_text_encoder": True,
    "surrogate_dtype": "float32",
    "surrogate_optimizer": "adamw",
    "optimizer_state_stash": "device",
}


def cross_attention_kv_parameters(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """``(name, parameter)`` of the key/value projections of every cross-attention (``attn2``)."""
    found = [
        (name, parameter)
        for name, parameter in unet.named_parameters()
        if ".attn2.to_k." in f".{name}" or ".attn2.to_v." in f".{name}"
    ]
    if not found:
        raise ValueError("the UNet has no cross-attention to_k / to_v layers (attn2)")
    return found


def step_sets(parameters: list[torch.nn.Parameter], count: int = 8) -> list[list[torch.nn.Parameter]]:
    """``parameters`` in about ``count`` sets of similar size for apply_gradients' ``step_in_turn``,
    the set holding the largest tensor (e.g. the text encoder's token embedding) last.

    Each set's gradients are freed, and with an optimizer-state stash its states leave again, before
    the next set's update, so the step holds one set's states and per-tensor temporaries besides the
    gradients not yet applied.
    """
    budget = sum(p.numel() for p in parameters) / count
    sets: list[list[torch.nn.Parameter]] = [[]]
    size = 0
    for parameter in parameters:
        if sets[-1] and size + parameter.numel() > budget:
            sets.append([])
            size = 0
        sets[-1].append(parameter)
        size += parameter.numel()
    return sorted(sets, key=lambda members: max(p.numel() for p in members))


class Surrogate:
    """A trainable UNet (+ text encoder) trained with the shared DreamBooth step.

    Args:
        components: ``DiffusionComponents`` with tokenizer, text_encoder, vae, unet, noise_scheduler.
        copy: train copies (made once, here) instead of the components' own modules.
        train_text_encoder: train the text encoder too (else it stays frozen and shared).
        trainable: ``all`` UNet parameters, or only the cross-attention ``to_k`` / ``to_v`` (CAAT).
        prompt: instance prompt. class_prompt: class-prior prompt.
        lr: AdamW learning rate. batch_size: instance images per step (as many prior rows).
        prior_loss_weight, max_grad_norm: DreamBooth step options.
        generator: CPU generator for posterior samples, noise and timesteps.
        dtype: dtype of the trained modules' weights (``bfloat16`` reproduces the reference scripts,
            whose AdamW steps at lr 5e-7 leave most bf16 weights unchanged).
        optimizer: ``adamw`` (torch, the reference) or ``adamw_8bit`` (bitsandbytes: a quarter of
            the optimizer-state memory).
        state_stash: where the optimizer's states wait between steps
            (:class:`~lightning_cat.protections.stash.OptimizerStateStash`): ``device`` (in place),
            ``cpu`` or ``disk``.
    """

    def __init__(
        self,
        components,
        *,
        copy: bool,
        train_text_encoder: bool,
        trainable: Literal["all", "cross_attention_kv"] = "all",
        prompt: str,
        class_prompt: str,
        lr: float,
        batch_size: int = 1,
        prior_loss_weight: float = 1.0,
        max_grad_norm: float | None = 1.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        optimizer: Optimizer = "adamw",
        state_stash: StashLocation = "device",
    ) -> None:
        if state_stash not in STASH_LOCATIONS:
            raise ValueError(f"state_stash must be one of {list(STASH_LOCATIONS)}, got {state_stash!r}")
        self.state_stash = state_stash
        self.vae = components.vae
        self.optimizer_name = optimizer
        self.noise_scheduler = components.noise_scheduler
        self.tokenizer = components.tokenizer
        self.unet = copy_module.deepcopy(components.unet) if copy else components.unet
        trains_text = train_text_encoder and trainable == "all"
        self.text_encoder = (
            copy_module.deepcopy(components.text_encoder) if copy and trains_text else components.text_encoder
        )
        self.trains_text_encoder = trains_text
        self.copied = copy
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.prior_loss_weight = float(prior_loss_weight)
        self.max_grad_norm = max_grad_norm
        self.generator = generator if generator is not None else torch.Generator()
        self.prompt_ids = tokenize_prompts(self.tokenizer, [prompt])
        self.class_prompt_ids = tokenize_prompts(self.tokenizer, [class_prompt])
        self._cursor = 0
        self._class_cursor = 0
        if trainable not in ("all", "cross_attention_kv"):
            raise ValueError(f"trainable must be 'all' or 'cross_attention_kv', got {trainable!r}")
        self.trainable = trainable
        self.dtype = dtype
        if dtype != torch.float32:
            self.unet.to(dtype)
            if trains_text:
                self.text_encoder.to(dtype)
        self._previous_flags = {id(p): p.requires_grad for p in self._all_parameters()}
        for parameter in self._all_parameters():
            parameter.requires_grad_(False)
        self._select_trained()

    def _select_trained(self) -> None:
        if self.trainable == "all":
            self.modules = {"unet": self.unet} | (
                {"text_encoder": self.text_encoder} if self.trains_text_encoder else {}
            )
            self._parameters = [p for m in self.modules.values() for p in m.parameters()]
        else:
            self.modules = {"unet": self.unet}
            self._parameters = [p for _, p in cross_attention_kv_parameters(self.unet)]
        self._step_in_turn = step_sets(self._parameters)
        for parameter in self._parameters:
            parameter.requires_grad_(True)

    def _all_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.unet.parameters()) + list(self.text_encoder.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def parameters(self) -> list[torch.nn.Parameter]:
        """The trained parameters."""
        return list(self._parameters)

    def clone(self, generator: torch.Generator | None = None, *, share: bool = False) -> Surrogate:
        """A second surrogate with its own generator and row cursors, and its own copy of the
        trained modules (allocated now, once) or, with ``share``, this one's modules."""
        twin = copy_module.copy(self)
        if not share:
            twin.unet = copy_module.deepcopy(self.unet)
            if self.trains_text_encoder:
                twin.text_encoder = copy_module.deepcopy(self.text_encoder)
        twin.copied = self.copied or not share
        twin._select_trained()
        twin.generator = generator if generator is not None else torch.Generator()
        twin._cursor = twin._class_cursor = 0
        return twin

    # ------------------------------------------------------------------ weights

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """References (no copies) to the trained modules' weights."""
        return {name: module.state_dict() for name, module in self.modules.items()}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Copy ``state`` into the existing parameters (no new allocation)."""
        for name, module in self.modules.items():
            module.load_state_dict(state[name])

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Trained parameters stop requiring gradients inside the block (PGD steps on the images
        then keep no activations for weight gradients)."""
        for parameter in self._parameters:
            parameter.requires_grad_(False)
        try:
            yield
        finally:
            for parameter in self._parameters:
                parameter.requires_grad_(True)

    def release(self) -> None:
        """Restore the ``requires_grad`` flags the modules had (after in-place training)."""
        for parameter in self._all_parameters():
            parameter.requires_grad_(self._previous_flags.get(id(parameter), False))

    # ------------------------------------------------------------------ text, images

    @torch.no_grad()
    def embeddings(self) -> torch.Tensor:
        """Current hidden states ``[1, L, D]`` of the instance prompt (for PGD objectives)."""
        return self.text_encoder(self.prompt_ids.to(self.device))[0].detach()

    @torch.no_grad()
    def encode(self, images: torch.Tensor | None, chunk: int = 8) -> LatentDistribution | None:
        """Posterior parameters of ``images`` (in chunks), or ``None``."""
        if images is None:
            return None
        parts = [latent_distribution(self.vae, images[i : i + chunk].detach()) for i in range(0, len(images), chunk)]
        return LatentDistribution.cat(parts).to(torch.float32)

    def _rows(self, total: int, count: int, cursor: int) -> list[int]:
        return [(cursor + i) % total for i in range(count)]

    def instance_batch(self, instances: LatentDistribution) -> tuple[list[int], LatentDistribution]:
        """The next ``batch_size`` instance rows (cycling through the set) and their posteriors."""
        rows = self._rows(len(instances.mean), self.batch_size, self._cursor)
        self._cursor += self.batch_size
        return rows, instances[rows]

    def class_batch(self, class_set: LatentDistribution, count: int) -> LatentDistribution:
        """The next ``count`` class-prior posteriors (cycling)."""
        rows = self._rows(len(class_set.mean), count, self._class_cursor)
        self._class_cursor += count
        return class_set[rows]

    def condition(self, num_instance: int, num_class: int) -> torch.Tensor:
        """Hidden states for ``num_instance`` instance rows then ``num_class`` prior rows."""
        ids = torch.cat([self.prompt_ids.repeat(num_instance, 1), self.class_prompt_ids.repeat(num_class, 1)])
        return self.text_encoder(ids.to(self.device))[0]

    # ------------------------------------------------------------------ training

    def optimizer(self) -> torch.optim.Optimizer:
        """A fresh AdamW over the trained parameters (the reference's betas, eps, weight decay)."""
        return adamw(
            [{"params": self._parameters}],
            self.optimizer_name,
            lr=self.lr,
            betas=(0.9, 0.999),
            weight_decay=1e-2,
            eps=1e-8,
        )

    def train(
        self,
        instances: LatentDistribution,
        class_set: LatentDistribution | None,
        steps: int,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:
        """``steps`` DreamBooth steps on ``instances`` (+ ``class_set`` prior rows when given).

        A fresh optimizer is made per call unless one is passed (the reference creates one per
        training phase). With a ``state_stash`` other than ``device`` the optimizer's states wait
        there between steps.
        """
        if steps <= 0:
            return
        given = optimizer is not None
        optimizer = optimizer if given else self.optimizer()
        with contextlib.closing(OptimizerStateStash(self.state_stash)) as state_stash:
            for step in range(steps):
                loss = self._train_step(instances, class_set, optimizer, state_stash)
                if on_step is not None:
                    on_step(step, float(loss))
            if given:  # the caller's optimizer gets its states back (a fresh one is dropped with them)
                for parameters in self._step_in_turn:
                    state_stash.take(optimizer, parameters)

    def _train_step(
        self,
        instances: LatentDistribution,
        class_set: LatentDistribution | None,
        optimizer: torch.optim.Optimizer,
        state_stash: OptimizerStateStash,
    ) -> torch.Tensor:
        """One DreamBooth step on the next rows; returns the (detached) loss."""
        _, batch = self.instance_batch(instances)
        num_instance = len(batch.mean)
        if class_set is not None:
            batch = LatentDistribution.cat([batch, self.class_batch(class_set, num_instance)])
        latents = scale_latents(self.vae, batch.sample(self.generator).to(self.device))
        condition = self.condition(num_instance, len(batch.mean) - num_instance)
        result = dreambooth_loss(
            self.unet,
            self.noise_scheduler,
            latents,
            condition,
            num_instance=num_instance if class_set is not None else None,
            prior_loss_weight=self.prior_loss_weight,
            generator=self.generator,
        )
        apply_gradients(result.loss, optimizer, self._parameters, self.max_grad_norm, self._step_in_turn, state_stash)
        return result.loss.detach()


class SurrogateProtection(Protection):
    """Base of the methods that fine-tune a surrogate over the whole set (coupled images).

    After :meth:`protect`, :attr:`objective` is ``L_DM`` under the surrogate state the last PGD
    steps used (for inspection and tests), and :attr:`surrogate` the trained surrogate.
    """

    coupled: ClassVar[bool] = True
    trained_parts: ClassVar[tuple[str, ...]] = ("unet", "text_encoder")
    #: True when the reference trains the surrogate on a separate clean set of the subject (Anti-DreamBooth's
    #: set_A) rather than on the images it protects; running without one is then warned about.
    trains_on_clean_set: ClassVar[bool] = False

    def __init__(self, components, **kwargs: Any) -> None:
        super().__init__(components, **kwargs)
        self.objective: DiffusionObjective | None = None
        self.surrogate: Surrogate | None = None

    def surrogate_training_set(self, protected: torch.Tensor, data: SurrogateData) -> torch.Tensor:
        """The clean images the surrogate fine-tunes on: ``data.clean_images`` (a separate set of the
        subject, as Anti-DreamBooth's set_A) or, when none is given, the images being protected
        (with a warning: the reference methods do not see the images they protect while training)."""
        if data.clean_images is not None:
            return data.clean_images
        if not self.trains_on_clean_set:
            return protected
        warnings.warn(
            f"{self.name}: the surrogate fine-tunes on the images it protects; the reference trains it on a "
            "separate clean set of the same subject (surrogate_images / ProtectionModule.surrogate_clean_root)",
            stacklevel=3,
        )
        return protected

    def make_surrogate(
        self, seed: int, purpose: str, *, copy: bool, trainable: Literal["all", "cross_attention_kv"] = "all"
    ) -> Surrogate:
        """A surrogate over the components with this method's options and its own seeded generator."""
        options = self.options
        return Surrogate(
            self.components,
            copy=copy,
            train_text_encoder=options.get("train_text_encoder", False),
            trainable=trainable,
            prompt=options["prompt"],
            class_prompt=options["class_prompt"],
            lr=options["surrogate_lr"],
            batch_size=options.get("surrogate_batch_size", 1),
            prior_loss_weight=options["prior_loss_weight"],
            max_grad_norm=options["max_grad_norm"],
            generator=torch.Generator().manual_seed(image_seed(seed, purpose, purpose="surrogate")),
            dtype=getattr(torch, options.get("surrogate_dtype", "float32")),
            optimizer=options.get("surrogate_optimizer", "adamw"),
            state_stash=options.get("optimizer_state_stash", "device"),
        )

    def make_objective(self, surrogate: Surrogate) -> DiffusionObjective:
        """``L_DM`` (ascended) under ``surrogate``'s UNet and current prompt embeddings."""
        return DiffusionObjective(
            self.components.vae,
            surrogate.unet,
            self.components.noise_scheduler,
            surrogate.embeddings(),
            ascend=True,
            timestep_range=self.options.get("timestep_range"),
            num_draws=self.options.get("num_noise_draws", 1),
        )

    def pgd_steps(
        self,
        adv: torch.Tensor,
        clean: torch.Tensor,
        objective: Objective,
        generators: list[torch.Generator],
        count: int,
        first_step: int,
        progress: Callable[[str, Any], None],
    ) -> torch.Tensor:
        """``count`` PGD steps on ``objective`` (step indices from ``first_step`` for the schedule)."""
        for step in range(first_step, first_step + count):
            grad, loss = objective.gradient(adv, objective.draw(adv, generators))
            adv = self.pgd.step(adv, clean, grad, ascend=objective.ascend, step=step)
            progress("pgd", loss)
        return adv

    def surrogate_callback(self, progress: Callable[[str, Any], None]) -> Callable[[int, float], None]:
        return lambda step, loss: progress("surrogate", loss)
