"""The ``testbed`` model: a trained Stable-Diffusion-shaped text-to-image model shipped with the package.

Unlike ``tiny`` (random weights), ``testbed`` was trained on offline photographs (see
``testbed_model/DATA_CARD.md`` and its recipe ``benchmarks/testbed/make_testbed_model.py``):
a VAE (factor 4: 64 px images give 4x16x16 latents), a UNet2DConditionModel, a small
CLIPTextModel with the real CLIP tokenizer and a DDIM scheduler, fp32 safetensors. The folder is
package data, so ``pretrained_model_name_or_path: testbed`` resolves to it and loads through
the same ``from_pretrained`` path as any checkpoint; nothing is built or downloaded.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TESTBED_MODELS", "TESTBED_RESOLUTION", "testbed_model_path"]

#: Names accepted wherever a ``pretrained_model_name_or_path`` is.
TESTBED_MODELS = ("testbed",)
#: The resolution the testbed model was trained at.
TESTBED_RESOLUTION = 64
_FOLDER = Path(__file__).resolve().parent / "testbed_model"


def testbed_model_path(name: str = "testbed") -> Path:
    """The diffusers folder of the testbed model ``name``.

    Raises:
        ValueError: for a name that is not a testbed model.
        FileNotFoundError: when the installed package lacks the folder (an incomplete install).
    """
    if name not in TESTBED_MODELS:
        raise ValueError(f"unknown testbed model {name!r}; choose one of {list(TESTBED_MODELS)}")
    if not (_FOLDER / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the testbed model folder '{_FOLDER}' is missing or incomplete (no model_index.json); reinstall "
            "the package, or rebuild it with benchmarks/testbed/make_testbed_model.py"
        )
    return _FOLDER
