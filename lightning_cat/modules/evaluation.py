"""A model-free LightningModule that hands image sets to the evaluator callbacks.

``lightning-cat test --config configs/eval/metrics.tiny.yaml`` runs it over an
:class:`~lightning_cat.datamodules.EvaluationDataModule`; the metrics live in the callbacks
(:class:`~lightning_cat.callbacks.GeneratedImageEvaluator`,
:class:`~lightning_cat.callbacks.ProtectedImageEvaluator`), which log one table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_cat.modules.base import LightningCatModule

__all__ = ["EvaluationModule"]


class EvaluationModule(LightningCatModule):
    """``test_step`` / ``validation_step`` return the batch flattened for the evaluators.

    Output keys: ``image``, ``clean``, ``prompt``, ``path``, ... from the paired side, and
    ``generated`` (and ``generated_path``) from the generated side, when present.
    """

    def __init__(self) -> None:
        super().__init__()

    @staticmethod
    def flatten(batch: Mapping[str, Any]) -> dict[str, Any]:
        """``{"paired": {...}, "generated": {...}}`` -> one flat dict (missing sides omitted)."""
        sides = ("paired", "generated")
        if not set(batch) <= set(sides) or not all(v is None or isinstance(v, Mapping) for v in batch.values()):
            return dict(batch)  # already flat (e.g. a PairedImageDataModule batch)
        outputs: dict[str, Any] = {}
        paired = batch.get("paired")
        if paired is not None:
            outputs.update(paired)
        generated = batch.get("generated")
        if generated is not None:
            outputs["generated"] = generated["image"]
            outputs["generated_path"] = generated["path"]
            if "prompt" in generated:
                outputs["generated_prompt"] = generated["prompt"]
        return outputs

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        return self.flatten(batch)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        return self.flatten(batch)
