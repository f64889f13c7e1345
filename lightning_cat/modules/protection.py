"""ProtectionModule: protect the images of a datamodule with one method of ``lightning_cat.protections``.

    lightning-cat fit --config configs/protect/advdm_plus.tiny.yaml

``fit`` runs one epoch over the datamodule's images (manual optimisation: the PGD loop lives in
the plain-torch protection, the module only wires it to the Trainer). Each batch is protected
and handed to :class:`~lightning_cat.callbacks.ProtectedImageWriter` (attached automatically
when ``output_dir`` is set), which saves PNGs with the inputs' stems and writes
``manifest.json`` last.

DDP. Per-image methods (AdvDM, PhotoGuard, Mist, SDS, SDST) draw each image's randomness from
``(seed, file stem)``, so the set written under N processes equals a one-process run. Methods
that fine-tune a surrogate over the whole set (FSMG, ASPL, MetaCloak, CAAT) protect the set as
one group: every rank computes the same group (identical results, no speed-up) and writes its
shard; run several subjects in parallel for throughput instead.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from jsonargparse.typing import register_type

from lightning_cat.atomic import check_writable
from lightning_cat.diffusion import weight_dtype
from lightning_cat.images import list_images
from lightning_cat.imageset import input_hashes
from lightning_cat.modules.base import DiffusionModule
from lightning_cat.modules.image_logging import amplified_difference, image_loggers, log_image_grid
from lightning_cat.optimization import Optimizer
from lightning_cat.perceptual import LPIPSNet
from lightning_cat.pixels import to_levels
from lightning_cat.protections import (
    PROTECTIONS,
    Protection,
    ProtectionMethod,
    build_protection,
    protection_class,
    protection_option_names,
)
from lightning_cat.protections.options import EOTTransform, SurrogateDtype, SurrogateInputRange
from lightning_cat.protections.pgd import Norm, StepSchedule
from lightning_cat.protections.stash import StashLocation

__all__ = ["ProtectionModule"]

# LightningCLI checks a method name at parse time against the registry as it is then.
register_type(ProtectionMethod, serializer=str, deserializer=ProtectionMethod)


class ProtectionModule(DiffusionModule):
    """Protect a set of images with one method; every option defaults to the method's reference value.

    Example::

        model = ProtectionModule(method="aspl", output_dir="protected/aspl", eps_255=8)
        data = ImageFolderDataModule("photos/", resolution=512, batch_size=4)
        Trainer(max_epochs=1, logger=False, enable_checkpointing=False).fit(model, data)

    The options after ``seed`` are the methods' options (``None``: the method's reference value):
    they go, as given, to :func:`lightning_cat.protections.build_protection`, which checks them
    (:data:`~lightning_cat.protections.options.OPTION_RULES`) and drives the shared PGD with them.

    Args:
        method: the protection method, a key of ``lightning_cat.protections.PROTECTIONS``.
        pretrained_model_name_or_path, revision, variant: the Stable Diffusion model.
        output_dir: folder the protected set is written to (``None``: attach
            :class:`~lightning_cat.callbacks.ProtectedImageWriter` yourself).
        overwrite: replace a different set already in ``output_dir``.
        seed: seed of all randomness of the protection (per image: ``(seed, file stem)``).
        class_root: class-prior images for surrogate prior preservation (FSMG, ASPL, MetaCloak,
            CAAT); ``None``: no prior preservation.
        num_class_images: use at most this many class images (``None``: all).
        surrogate_clean_root: a separate set of clean images of the same subject that the surrogate
            methods fine-tune on (Anti-DreamBooth's set_A; the datamodule's images are set_B, the
            ones protected). ``None``: the surrogate fine-tunes on the images it protects (warned).
        eps_255: L_inf (or L2) budget in /255 pixel units, in (0, 255].
        alpha_255: PGD step size in /255 pixel units.
        steps: PGD steps (ASPL: per iteration; MetaCloak: per cycle).
        norm: ``linf`` sign steps or ``l2`` steps.
        random_start: start from a random point of the budget ball.
        step_schedule: ``constant`` or ``linear`` decay to ``alpha * final_step_fraction``.
        final_step_fraction: see ``step_schedule``.
        gradient_checkpointing: recompute the VAE's and UNet's activations in the backward pass of
            PGD and surrogate steps: less memory, the same result, about one more forward pass.
        prompt: prompt of the diffusion objective / the instance prompt of surrogates.
        timestep_range: ``[low, high)`` of the objective's timesteps (default: all).
        num_noise_draws: noise draws per image and PGD step.
        target_image: target image (PhotoGuard, Mist, SDST).
        semantic_weight: Mist's weight of the semantic (``L_DM``) term.
        sds_weight: SDST's weight of the SDS term.
        style_prompt, style_strength, style_steps, style_guidance: Glaze-style's img2img style target
            (used when ``target_image`` is not set).
        lpips_budget, lpips_weight: Glaze-style's LPIPS penalty ``lpips_weight * max(LPIPS - lpips_budget, 0)``.
        lpips_net, lpips_backbone_weights, lpips_random_backbone: the LPIPS network of that penalty
            (weights from a local file; the random backbone is for tests).
        class_prompt: prompt of the class images.
        surrogate_lr: surrogate learning rate (AdamW).
        surrogate_batch_size: instance images per surrogate step.
        surrogate_pretrain_steps: FSMG's DreamBooth steps on the clean set before PGD.
        surrogate_steps: surrogate steps per phase (ASPL) or per cycle (MetaCloak).
        prior_loss_weight: weight of the prior-preservation loss.
        max_grad_norm: gradient clipping of surrogate steps.
        train_text_encoder: surrogates train the text encoder too.
        surrogate_dtype: ``float32`` surrogate weights (default: the intended algorithm) or ``bfloat16``
            (the reference scripts: the published numbers).
        surrogate_optimizer: ``adamw`` (torch, the reference) or ``adamw_8bit`` (bitsandbytes; a
            quarter of the optimizer-state memory, not the reference's arithmetic).
        optimizer_state_stash: where the surrogate's optimizer states wait between its steps
            (FSMG, ASPL, MetaCloak): ``device`` (default: in place), ``cpu`` (host memory: a GPU
            holds them only inside the optimizer step) or ``disk`` (temporary files).
        surrogate_input_range: MetaCloak's surrogate training sees instance images in ``unit`` range
            ([-1, 1], default) or in ``0-255`` (the reference script: its published numbers).
        iterations: ASPL's outer iterations.
        theta_stash: where ASPL keeps theta's weights while theta' trains in the same modules:
            ``cpu`` (default: host memory, so a GPU holds one model), ``disk`` (a temporary
            file: for short host memory and CPU-only machines) or ``device`` (beside the model).
        rounds, pool_size, pool_interval, cycles_per_snapshot: MetaCloak's schedule.
        pool_stash: where MetaCloak keeps its pool of surrogate snapshots: ``cpu`` (default),
            ``disk`` (temporary files) or ``device``.
        eot_samples, eot_transforms, crop_scale, blur_kernel_size: MetaCloak's transformations.

    Raises:
        ValueError: for an unknown method, an option the method does not take or an illegal value
            (before any model loads).
    """

    def __init__(
        self,
        method: ProtectionMethod = "advdm_plus",
        pretrained_model_name_or_path: str = "tiny",
        revision: str | None = None,
        variant: str | None = None,
        output_dir: str | None = None,
        overwrite: bool = False,
        seed: int = 0,
        class_root: str | None = None,
        num_class_images: int | None = None,
        surrogate_clean_root: str | None = None,
        eps_255: float | None = None,
        alpha_255: float | None = None,
        steps: int | None = None,
        norm: Norm | None = None,
        random_start: bool | None = None,
        step_schedule: StepSchedule | None = None,
        final_step_fraction: float | None = None,
        gradient_checkpointing: bool | None = None,
        prompt: str | None = None,
        timestep_range: tuple[int, int] | None = None,
        num_noise_draws: int | None = None,
        target_image: str | None = None,
        semantic_weight: float | None = None,
        sds_weight: float | None = None,
        style_prompt: str | None = None,
        style_strength: float | None = None,
        style_steps: int | None = None,
        style_guidance: float | None = None,
        lpips_budget: float | None = None,
        lpips_weight: float | None = None,
        lpips_net: LPIPSNet | None = None,
        lpips_backbone_weights: str | None = None,
        lpips_random_backbone: bool | None = None,
        class_prompt: str | None = None,
        surrogate_lr: float | None = None,
        surrogate_batch_size: int | None = None,
        surrogate_pretrain_steps: int | None = None,
        surrogate_steps: int | None = None,
        prior_loss_weight: float | None = None,
        max_grad_norm: float | None = None,
        train_text_encoder: bool | None = None,
        surrogate_dtype: SurrogateDtype | None = None,
        surrogate_optimizer: Optimizer | None = None,
        optimizer_state_stash: StashLocation | None = None,
        surrogate_input_range: SurrogateInputRange | None = None,
        iterations: int | None = None,
        theta_stash: StashLocation | None = None,
        rounds: int | None = None,
        pool_size: int | None = None,
        pool_interval: int | None = None,
        cycles_per_snapshot: int | None = None,
        pool_stash: StashLocation | None = None,
        eot_samples: int | None = None,
        eot_transforms: list[EOTTransform] | None = None,
        crop_scale: float | None = None,
        blur_kernel_size: int | None = None,
    ) -> None:
        super().__init__()

    def check_options(self) -> None:
        super().check_options()
        h = self.hparams
        name = type(self).__name__
        h.method = str(h.method)  # plain text in hparams and manifests
        try:
            self.method_class: type[Protection] = protection_class(h.method)
            given = {option: h[option] for option in protection_option_names() if option in h}
            self.protection_options = self.method_class.resolve(**given)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        if h.output_dir is not None:
            check_writable(h.output_dir, owner=f"{name}: output_dir")
        if h.class_root is not None:
            if not self.method_class.coupled:
                coupled = [m for m, cls in PROTECTIONS.items() if cls.coupled]
                raise ValueError(
                    f"{name}: class_root is used only by the surrogate methods {coupled}, not {h.method!r}"
                )
            list_images(h.class_root, what="class image folder")  # exists and holds images
        if h.num_class_images is not None and (h.class_root is None or h.num_class_images < 1):
            self.fail("num_class_images", ">= 1 and needs class_root")
        if h.surrogate_clean_root is not None:
            if not self.method_class.coupled:
                raise ValueError(
                    f"{name}: surrogate_clean_root is used only by the surrogate methods, not {h.method!r}"
                )
            list_images(h.surrogate_clean_root, what="surrogate clean image folder")

    def configure_models(self) -> None:
        # The models load at setup, once the Trainer's device and precision are known.
        self.automatic_optimization = False
        self.protection: Protection | None = None
        self._group: dict[str, torch.Tensor] = {}
        self._logged_steps: dict[str, int] = {}
        self._examples_logged = 0
        #: Stems whose protected image an interrupted run already saved (set by the writer at setup).
        self.finished_keys: set[str] = set()
        # Lightning wraps the module in DistributedDataParallel under ddp strategies, and DDP refuses
        # a module without a trainable parameter. This one never receives a gradient; gradient
        # synchronisation is switched off in on_train_start (see there).
        self.ddp_anchor = torch.nn.Parameter(torch.zeros(1))

    @property
    def resumes_per_image(self) -> bool:
        """Whether a re-run keeps the images an interrupted run finished (per-image methods: each
        image depends only on its own seed and stem); surrogate methods redo the coupled set."""
        return not self.method_class.coupled

    @property
    def method(self) -> str:
        return self.hparams.method

    @property
    def seed(self) -> int:
        return self.hparams.seed

    # ------------------------------------------------------------------ identity (manifest)

    def check_datamodule(self, datamodule: Any) -> None:
        """Refuse a datamodule without a deterministic transform (clean and saved images must align)."""
        transform = getattr(datamodule, "transform", None)
        if transform is None:
            raise ValueError(
                f"{type(self).__name__} needs an image datamodule (with a `transform`), got {datamodule!r}"
            )
        if not transform.is_deterministic:
            raise ValueError(
                f"{type(self).__name__}: the datamodule must preprocess deterministically (crop='center', "
                f"hflip=False) so protected images align with their clean sources; got crop={transform.crop!r}, "
                f"hflip={transform.hflip}"
            )

    def params(self) -> dict[str, Any]:
        """Every option of the protection (method defaults filled in), as recorded in manifests."""
        h = self.hparams
        params = {key: list(v) if isinstance(v, tuple) else v for key, v in self.protection_options.items()}
        if self.method_class.coupled:
            params["class_root"] = None if h.class_root is None else str(Path(h.class_root).resolve())
            params["num_class_images"] = h.num_class_images
            root = h.surrogate_clean_root
            params["surrogate_clean_root"] = None if root is None else str(Path(root).resolve())
        return params

    def manifest_identity(self, datamodule: Any) -> dict[str, Any]:
        """The manifest entries that identify the set this run writes (see ``lightning_cat.imageset``)."""
        self.check_datamodule(datamodule)
        transform = datamodule.transform
        purifier = getattr(datamodule, "purifier", None)
        return {
            "method": self.method,
            "params": self.params(),
            "eps_255": self.protection_options["eps_255"],
            "resolution": transform.resolution,
            "preprocessing": {**transform.to_dict(), "purifier": None if purifier is None else purifier.params()},
            "seed": self.seed,
            "model": {
                "name": self.pretrained_model_name_or_path,
                "revision": self.revision,
                "variant": self.variant,
            },
            "inputs": input_hashes(datamodule.dataset),
        }

    # ------------------------------------------------------------------ Lightning hooks

    def configure_callbacks(self):
        if self.hparams.output_dir is None:
            return []
        from lightning_cat.callbacks.protected_image_writer import ProtectedImageWriter

        return [ProtectedImageWriter(self.hparams.output_dir, overwrite=self.hparams.overwrite)]

    def configure_optimizers(self):
        return None  # PGD and surrogate optimisers live inside the protection

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is not None:
            self.check_datamodule(datamodule)
        from lightning_cat.callbacks.protected_image_writer import ProtectedImageWriter

        if self.hparams.output_dir is None and not any(
            isinstance(c, ProtectedImageWriter) for c in self.trainer.callbacks
        ):
            warnings.warn(
                "ProtectionModule has no output_dir and no ProtectedImageWriter callback: nothing will be saved",
                stacklevel=2,
            )
        if self.protection is None:
            components = self.load_pretrained(*self.method_class.parts)
            self.protection = build_protection(
                self.method,
                components,
                in_place=True,  # the module owns its weights; no extra surrogate copy needed
                show_progress=self.trainer.is_global_zero and self.trainer.progress_bar_callback is not None,
                **self.protection_options,
            )
        if str(self.trainer.precision).endswith("-mixed"):
            dtype = weight_dtype(self.trainer.precision)
            for part in set(self.pretrained_parts) - set(self.method_class.trained_parts):
                module = getattr(self, part)
                if isinstance(module, torch.nn.Module):
                    module.to(dtype)

    def _log_step(self, kind: str, loss: float) -> None:
        # Many PGD (or surrogate) steps run inside one training step, so each is logged with its
        # own counter as the step, straight to every logger (self.log keeps one value per step).
        counters = self._logged_steps
        counters[kind] = counters.get(kind, 0) + 1
        if self._trainer is not None and self.trainer.is_global_zero:
            name = f"protect/{kind}_loss"  # protect/pgd_loss, protect/surrogate_loss
            for logger in self.trainer.loggers:
                logger.log_metrics({name: loss}, step=counters[kind])

    def _log_budgets(self, clean: torch.Tensor, protected: torch.Tensor, keys: list[str]) -> None:
        """Each image's achieved L_inf (/255, on the 8-bit levels it is saved with), their maximum,
        and clean | protected | amplified-difference grids for the loggers that take images."""
        linf = (to_levels(protected) - to_levels(clean)).flatten(1).abs().amax(1)
        options = {"on_step": False, "on_epoch": True, "batch_size": 1}
        self.log_dict({f"protect/linf_255/{key}": value for key, value in zip(keys, linf, strict=True)}, **options)
        self.log("protect/linf_255_max", linf.max(), reduce_fx="max", sync_dist=True, **options)
        if image_loggers(self):
            rows = [clean, protected, amplified_difference(protected, clean)]
            log_image_grid(self, "protect/examples", rows, step=self._examples_logged, max_images=8)
            self._examples_logged += 1

    @staticmethod
    def _load_folder(
        root: str | None, datamodule: Any, what: str, max_images: int | None = None
    ) -> torch.Tensor | None:
        if root is None:
            return None
        from lightning_cat.datamodules import ImageFolderDataset

        dataset = ImageFolderDataset(root, datamodule.transform, what=what, max_images=max_images)
        return torch.stack([dataset.load(i) for i in range(len(dataset))])

    def on_train_start(self) -> None:
        wrapper = self.trainer.strategy.model
        if isinstance(wrapper, torch.nn.parallel.DistributedDataParallel):
            # Nothing is back-propagated through the wrapper's forward (PGD and surrogate gradients
            # are taken inside training_step): keep DDP's reducer from waiting for a backward.
            wrapper.require_backward_grad_sync = False
        if not self.method_class.coupled:
            return
        # A surrogate couples the images: protect the whole set (every rank, identically) once.
        h = self.hparams
        datamodule = self.trainer.datamodule
        dataset = datamodule.dataset if datamodule is not None else self.trainer.train_dataloader.dataset
        items = [dataset[i] for i in range(len(dataset))]
        images = torch.stack([item["image"] for item in items]).to(self.device)
        keys = [Path(item["path"]).stem for item in items]
        protected = self.protection.protect(
            images,
            keys,
            seed=self.seed,
            class_images=self._load_folder(h.class_root, datamodule, "class image folder", h.num_class_images),
            surrogate_images=self._load_folder(h.surrogate_clean_root, datamodule, "surrogate clean image folder"),
            callback=self._log_step,
        )
        self._group = {key: image for key, image in zip(keys, protected, strict=True)}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Returns ``protected`` images and their ``keys`` (stems). A batch whose images an interrupted
        run already saved (:attr:`finished_keys`) is skipped, not recomputed; a partly saved batch is
        recomputed whole, since the batch a PGD step sees changes its floating-point rounding."""
        keys = [Path(path).stem for path in batch["path"]]
        if self.method_class.coupled:
            protected = torch.stack([self._group[key] for key in keys]).to(batch["image"].device)
        elif all(key in self.finished_keys for key in keys):
            return {"protected": batch["image"][:0], "keys": []}
        else:
            protected = self.protection.protect(batch["image"], keys, seed=self.seed, callback=self._log_step)
        self._log_budgets(batch["image"], protected.detach(), keys)
        return {"protected": protected.detach(), "keys": keys}

    def on_train_epoch_end(self) -> None:
        self.trainer.should_stop = True  # one pass over the set protects it
