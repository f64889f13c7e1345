"""Protective perturbations in plain torch: one objective per method and a shared PGD driver.

No Lightning is needed. The one-call API protects a batch of images with loaded components::

    from lightning_cat.diffusion import load_components
    from lightning_cat.protections import protect

    components = load_components("sd21-base")
    protected = protect(
        images,                  # float [B, 3, H, W] in [-1, 1] (on the 8-bit grid, e.g. from a PNG)
        method="advdm_plus",     # a key of PROTECTIONS
        components=components,   # DiffusionComponents (only the method's `parts` are used)
        keys=["alice", "bob"],   # one name per image (file stems): per-image randomness is seeded
        seed=0,                  # from (seed, key), so results do not depend on batching or ranks
        eps_255=8, steps=50,     # method options; anything left out takes the reference default
    )
    # `protected` lies on the 8-bit grid and within eps_255 of the 8-bit clean images: saving it
    # with lightning_cat.images.save_png keeps the budget exactly.

Methods (:data:`PROTECTIONS`): ``advdm_plus``, ``advdm_minus``, ``photoguard``, ``mist``,
``sds_plus``, ``sds_minus``, ``sdst`` work image by image; ``fsmg``, ``aspl``, ``metacloak``,
``caat`` fine-tune a surrogate over the whole set (``coupled``), so they treat the images passed
in one call as one set (sorted by key) and accept ``class_images`` for prior preservation.
``resolve_protection_options(method, **options)`` checks options without loading anything and
returns every option with its default (what manifests record).

Lower level: ``build_protection(method, components, **options)`` returns a :class:`Protection`
(``.protect(images, keys, seed=...)``, ``.params()``, ``.pgd``, and for per-image methods
``.objective``). An :class:`Objective` is one loss and a direction (``loss(images, draw)`` per
image, ``ascend``, ``draw(images, generators)``, ``gradient``); :class:`PGD` is the driver
(``start``, ``step``, ``project``, ``finalize`` onto the 8-bit grid, ``run``). Budgets and step
sizes are always given in ``/255`` pixel units and converted once (``to_model_units``).

Options: each method's ``defaults`` lists the options it takes with their reference values;
:data:`~lightning_cat.protections.options.OPTION_RULES` says what each accepts, and
:class:`lightning_cat.modules.ProtectionModule` documents them all.
"""

from lightning_cat.protections.base import DiffusionDraw, DiffusionObjective, Objective, ObjectiveProtection, Protection
from lightning_cat.protections.pgd import PGD, to_model_units
from lightning_cat.protections.registry import (
    PROTECTIONS,
    ProtectionMethod,
    build_protection,
    protect,
    protection_class,
    protection_option_names,
    resolve_protection_options,
)
from lightning_cat.protections.surrogate import Surrogate, SurrogateProtection

__all__ = [
    "PGD",
    "PROTECTIONS",
    "ProtectionMethod",
    "DiffusionDraw",
    "DiffusionObjective",
    "Objective",
    "ObjectiveProtection",
    "Protection",
    "Surrogate",
    "SurrogateProtection",
    "build_protection",
    "protect",
    "protection_class",
    "protection_option_names",
    "resolve_protection_options",
    "to_model_units",
]
