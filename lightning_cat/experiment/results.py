"""The results table of a finished plan: one row per (subject, protection, defense, customization, prompt).

Every value comes from a stage's own output: the evaluate stage's ``metrics.json`` (what its
callbacks logged), the protected set's ``manifest.json`` (the budget and the L_inf measured on
the saved PNGs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning_cat.experiment.config import CLEAN_PROTECTIONS
from lightning_cat.experiment.plan import Cell

__all__ = ["budget_columns", "result_rows"]


def budget_columns(method: str, protected_images: Path) -> dict[str, float]:
    """``eps_255`` (the protection's budget) and ``linf_255`` (the largest L_inf of its saved PNGs)."""
    if method in CLEAN_PROTECTIONS:
        return {"eps_255": 0.0, "linf_255": 0.0}
    manifest = json.loads((protected_images / "manifest.json").read_text())
    measured = [entry["linf_255"] for entry in manifest["files"].values()]
    return {"eps_255": float(manifest["eps_255"]), "linf_255": float(max(measured))}


def result_rows(cells: list[Cell]) -> list[dict[str, Any]]:
    """The rows of every cell, prompt by prompt: identifying columns, budget, then every metric."""
    rows = []
    for cell in cells:
        budget = budget_columns(cell.method, cell.protected.outputs["images"])
        ids = {
            "subject": cell.subject,
            "protection": cell.protection,
            "method": cell.method,
            "defense": cell.defense,
            "customization": cell.customization,
        }
        for result in json.loads(cell.evaluate.outputs["metrics"].read_text()):
            result = dict(result)
            rows.append({**ids, "prompt": result.pop("prompt"), **budget, **result})
    return rows
