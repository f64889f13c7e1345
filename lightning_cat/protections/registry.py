"""The registry of protection methods, the builder, and the one-call :func:`protect`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lightning_cat.protections.advdm import AdvDMMinus, AdvDMPlus
from lightning_cat.protections.anti_dreambooth import ASPL, FSMG
from lightning_cat.protections.base import Protection, StepCallback
from lightning_cat.protections.caat import CAAT
from lightning_cat.protections.glaze import GlazeStyle
from lightning_cat.protections.metacloak import MetaCloak
from lightning_cat.protections.mist import Mist
from lightning_cat.protections.photoguard import PhotoGuard
from lightning_cat.protections.sds import SDST, SDSMinus, SDSPlus

__all__ = [
    "PROTECTIONS",
    "ProtectionMethod",
    "build_protection",
    "protect",
    "protection_class",
    "protection_option_names",
    "resolve_protection_options",
]

#: Method name -> class. Names are what configs, manifests and ``ProtectionModule.method`` use.
PROTECTIONS: dict[str, type[Protection]] = {
    cls.name: cls
    for cls in (
        AdvDMPlus,
        AdvDMMinus,
        PhotoGuard,
        Mist,
        SDSPlus,
        SDSMinus,
        SDST,
        GlazeStyle,
        FSMG,
        ASPL,
        MetaCloak,
        CAAT,
    )
}


class ProtectionMethod(str):
    """A method name: making one checks it against :data:`PROTECTIONS` as registered at that moment,
    so a method registered by a user is accepted (a ``Literal`` would freeze the choices at import).

    Raises:
        ValueError: for an unknown name, listing the registered ones.
    """

    def __new__(cls, value: str) -> ProtectionMethod:
        protection_class(value)
        return super().__new__(cls, value)


def protection_class(method: str) -> type[Protection]:
    """The class registered as ``method``.

    Raises:
        ValueError: for an unknown name, listing the registered ones.
    """
    try:
        return PROTECTIONS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown protection method {method!r}; choose one of {list(PROTECTIONS)}") from None


def protection_option_names() -> set[str]:
    """Every option some registered method takes (the union of their ``defaults``)."""
    return set().union(*(cls.defaults for cls in PROTECTIONS.values()))


def resolve_protection_options(method: str, **options: Any) -> dict[str, Any]:
    """Check ``options`` for ``method`` without loading anything; returns the complete options."""
    return protection_class(method).resolve(**options)


def build_protection(
    method: str, components, *, in_place: bool = False, show_progress: bool = True, **options: Any
) -> Protection:
    """Instantiate ``method`` on loaded ``components`` (see :class:`Protection` for the arguments)."""
    return protection_class(method)(components, in_place=in_place, show_progress=show_progress, **options)


def protect(
    images: torch.Tensor,
    *,
    method: str,
    components,
    keys: Sequence[str] | None = None,
    seed: int = 0,
    class_images: torch.Tensor | None = None,
    surrogate_images: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    show_progress: bool = True,
    in_place: bool = False,
    **options: Any,
) -> torch.Tensor:
    """Protect a batch (or set) of images with ``method``; see the package docstring."""
    protection = build_protection(method, components, in_place=in_place, show_progress=show_progress, **options)
    if keys is None:
        keys = [f"{index:06d}" for index in range(images.shape[0])]
    return protection.protect(
        images, keys, seed=seed, class_images=class_images, surrogate_images=surrogate_images, callback=callback
    )
