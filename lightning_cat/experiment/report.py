"""The experiment's results table and report: CSV/JSON, bar plots, image grids, Markdown, HTML.

Rows are dicts with the identifying columns of :data:`ID_COLUMNS` and one numeric column per
metric. Everything here is plain Python + matplotlib + PIL, so a report can be rebuilt from a
``results.json`` without running anything.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from lightning_cat.atomic import atomic_write_bytes, atomic_write_json
from lightning_cat.experiment.config import BASE_MODEL

__all__ = [
    "ID_COLUMNS",
    "budget_curves",
    "cell_grids",
    "image_grid",
    "metric_columns",
    "plot_budget_curves",
    "plot_metric",
    "summarize",
    "write_report",
    "write_results",
]

#: Columns that identify a row of the results table.
ID_COLUMNS = ("subject", "protection", "method", "defense", "customization", "prompt")


def metric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Numeric, non-identifying columns present in any row, in first-seen order."""
    columns: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key not in ID_COLUMNS and isinstance(value, (int, float)) and not isinstance(value, bool):
                columns.setdefault(key, None)
    return list(columns)


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell (every identifying column but ``prompt``): each metric's mean over the
    cell's prompts, finite values only (a metric with none stays absent)."""
    cells: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    keys = [c for c in ID_COLUMNS if c != "prompt"]
    for row in rows:
        cells[tuple(row.get(k) for k in keys)].append(row)
    summary = []
    for cell, members in cells.items():
        entry: dict[str, Any] = dict(zip(keys, cell, strict=True))
        for metric in metric_columns(members):
            values = [float(r[metric]) for r in members if _is_finite_number(r.get(metric))]
            if values:
                entry[metric] = sum(values) / len(values)
        summary.append(entry)
    return summary


def _is_base(row: dict[str, Any]) -> bool:
    """A row of the base model's own samples (``base_model: true``)."""
    return row.get("customization") == BASE_MODEL


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    extra = [k for row in rows for k in row if k not in ID_COLUMNS]
    return list(ID_COLUMNS) + list(dict.fromkeys(extra))


def write_results(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``results.csv`` and ``results.json`` (atomically); returns their paths."""
    out = Path(out_dir)
    columns = _columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, "") for key in columns})
    atomic_write_bytes(out / "results.csv", buffer.getvalue().encode())
    # Strict JSON has no NaN/inf: a metric that could not be computed is null there.
    atomic_write_json(out / "results.json", [{k: _json_value(v) for k, v in row.items()} for row in rows])
    return out / "results.csv", out / "results.json"


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    return "" if value is None else str(value)


def plot_metric(rows: Sequence[dict[str, Any]], metric: str, path: str | os.PathLike) -> Path:
    """Bar plot of ``metric``: protections on the x axis, one bar per defense.

    Values are averaged over subjects, prompts and customizations (finite values only); the base
    model's rows (customization ``base``) are a dashed line across the plot.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    base = [float(r[metric]) for r in rows if _is_base(r) and _is_finite_number(r.get(metric))]
    rows = [row for row in rows if not _is_base(row)]
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        value = row.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            values[(row["protection"], row["defense"])].append(float(value))
    protections = list(dict.fromkeys(row["protection"] for row in rows))
    defenses = list(dict.fromkeys(row["defense"] for row in rows))
    width = 0.8 / max(1, len(defenses))
    figure, axis = plt.subplots(figsize=(1.6 + 1.2 * len(protections), 3.2), dpi=110)
    for d, defense in enumerate(defenses):
        heights = [
            sum(values[(p, defense)]) / len(values[(p, defense)]) if values[(p, defense)] else float("nan")
            for p in protections
        ]
        positions = [i + (d - (len(defenses) - 1) / 2) * width for i in range(len(protections))]
        axis.bar(positions, heights, width=width, label=defense)
    if base:
        axis.axhline(sum(base) / len(base), color="gray", linestyle="--", label="base model")
    axis.set_xticks(range(len(protections)), protections)
    axis.set_ylabel(metric)
    axis.set_title(metric)
    axis.legend(title="defense", fontsize="small")
    return _save_figure(figure, path)


def budget_curves(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[float, list[dict[str, Any]]]]:
    """The rows of every (method, defense) by budget ``eps_255``, for methods run at two budgets or
    more (a sweep); clean rows join each method's curve at budget 0 (the base model's do not)."""
    by_method: dict[tuple[str, str], dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    clean: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if _is_base(row):
            continue
        if row.get("eps_255") in (None, 0, 0.0):
            clean[row["defense"]].append(row)
        else:
            by_method[(row["method"], row["defense"])][float(row["eps_255"])].append(row)
    curves = {}
    for (method, defense), points in by_method.items():
        if len(points) >= 2:
            if clean.get(defense):
                points[0.0] = clean[defense]
            curves[(method, defense)] = dict(sorted(points.items()))
    return curves


def plot_budget_curves(rows: Sequence[dict[str, Any]], metric: str, path: str | os.PathLike) -> Path | None:
    """Line plot of ``metric`` against ``eps_255``: one line per (method, defense), each point the mean
    over subjects, prompts and customizations (finite values only). ``None`` when there is no sweep."""
    curves = budget_curves(rows)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.4), dpi=110)
    for (method, defense), points in curves.items():
        xs, ys = [], []
        for eps, members in points.items():
            values = [float(r[metric]) for r in members if _is_finite_number(r.get(metric))]
            if values:
                xs.append(eps)
                ys.append(sum(values) / len(values))
        if xs:
            axis.plot(xs, ys, marker="o", label=f"{method} / {defense}")
    axis.set_xlabel("eps_255 (budget, /255)")
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} against the budget")
    axis.legend(fontsize="x-small")
    return _save_figure(figure, path)


def _save_figure(figure: Any, path: str | os.PathLike) -> Path:
    """Lay out, save as PNG (atomically) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def image_grid(
    rows: Sequence[tuple[str, Sequence[str | os.PathLike | None]]],
    columns: Sequence[str],
    path: str | os.PathLike,
    cell: int = 128,
) -> Path:
    """Save a labelled grid: one row per ``(label, images)``; ``None`` leaves a cell blank."""
    font = ImageFont.load_default(size=13)
    header = 22  # the row labels in full (a sweep's "advdm_plus@eps_255=16"), at least 110 px
    label_width = max([110] + [int(font.getlength(label)) + 8 for label, _ in rows])
    canvas = Image.new("RGB", (label_width + cell * len(columns), header + cell * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(columns):
        draw.text((label_width + c * cell + 4, 4), title[: cell // 7], fill="black", font=font)
    for r, (label, images) in enumerate(rows):
        draw.text((4, header + r * cell + cell // 2 - 6), label, fill="black", font=font)
        for c, image_path in enumerate(images):
            if image_path is None:
                continue
            with Image.open(image_path) as image:
                tile = image.convert("RGB").resize((cell, cell), Image.Resampling.BICUBIC)
            canvas.paste(tile, (label_width + c * cell, header + r * cell))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def cell_grids(cells: Sequence[Any], columns: Sequence[str], out_dir: str | os.PathLike) -> list[Path]:
    """One grid per (subject, customization) of an experiment's cells, under ``out_dir/grids``: a row
    per protection with a clean image, its protected version and one sample per defense (first prompt;
    blank for a skipped cell).

    ``cells`` are :class:`~lightning_cat.experiment.plan.Cell` s; ``columns`` the defenses in order.
    """
    grids = []
    groups = list(dict.fromkeys((c.subject, c.customization) for c in cells if c.customization != BASE_MODEL))
    for subject, customization in groups:
        rows = []
        for protection in dict.fromkeys(c.protection for c in cells):
            by_defense = {
                c.defense: c
                for c in cells
                if (c.subject, c.protection, c.customization) == (subject, protection, customization)
            }
            first = next(iter(by_defense.values()))
            clean = sorted(first.clean.outputs["images"].iterdir())[0]
            protected = first.protected.outputs["images"] / f"{clean.stem}.png"
            samples = []
            for defense in columns:
                if defense not in by_defense:  # a cell the experiment skips stays blank
                    samples.append(None)
                    continue
                folder = by_defense[defense].samples.outputs["samples"]
                record = json.loads((folder / "samples.json").read_text())
                samples.append(sorted((folder / record["prompts"][0]["folder"]).glob("*.png"))[0])
            rows.append((protection, [clean, protected if protected.is_file() else clean, *samples]))
        slug = "".join(ch if ch.isalnum() or ch in "-_.+" else "-" for ch in subject)
        path = Path(out_dir) / "grids" / f"{slug}-{customization}.png"
        grids.append(image_grid(rows, ["clean", "protected", *columns], path))
    return grids


def _markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_format(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def write_report(
    rows: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike,
    *,
    title: str = "lightning-cat experiment",
    notes: Sequence[str] = (),
    grids: Sequence[Path] = (),
) -> tuple[Path, Path]:
    """Write ``report.md`` and a self-contained ``report.html`` (images embedded) with a summary
    table (mean over prompts per cell), the full results table, one bar plot per metric (under
    ``plots/``) and the given image grids."""
    out = Path(out_dir)
    columns = _columns(rows)
    summary = summarize(rows)
    summary_columns = [c for c in columns if c != "prompt"]
    metrics = metric_columns(rows)
    plots = [plot_metric(rows, metric, out / "plots" / f"{_slug(metric)}.png") for metric in metrics]
    curves = [
        plot_budget_curves(rows, m, out / "plots" / f"{_slug(m)}-vs-budget.png") for m in metrics if m != "eps_255"
    ]
    curves = [path for path in curves if path is not None]

    markdown = [f"# {title}", ""]
    markdown += [f"- {note}" for note in notes] + ([""] if notes else [])
    markdown += ["## Summary (mean over prompts)", "", _markdown_table(summary, summary_columns), ""]
    markdown += ["## Results per prompt", "", _markdown_table(rows, columns), ""]
    if plots:
        markdown += ["## Metrics by protection and defense", ""]
        markdown += [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    if curves:
        markdown += ["## Metrics against the budget", ""]
        markdown += [f"![{p.stem}](plots/{p.name})" for p in curves] + [""]
    if grids:
        markdown += ["## Images", ""]
        markdown += [f"![{g.stem}]({Path(os.path.relpath(g, out)).as_posix()})" for g in grids] + [""]
    atomic_write_bytes(out / "report.md", "\n".join(markdown).encode())

    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}"
        "img{max-width:100%;margin:6px 0}"
    )
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts += [f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts += ["<h2>Summary (mean over prompts)</h2>", _html_table(summary, summary_columns)]
    parts += ["<h2>Results per prompt</h2>", _html_table(rows, columns)]
    if plots:
        parts.append("<h2>Metrics by protection and defense</h2>")
        parts += [f"<img alt='{html.escape(p.stem)}' src='{_data_uri(p)}'>" for p in plots]
    if curves:
        parts.append("<h2>Metrics against the budget</h2>")
        parts += [f"<img alt='{html.escape(p.stem)}' src='{_data_uri(p)}'>" for p in curves]
    if grids:
        parts.append("<h2>Images</h2>")
        parts += [f"<img alt='{html.escape(g.stem)}' src='{_data_uri(g)}'>" for g in grids]
    parts.append("</body></html>")
    atomic_write_bytes(out / "report.html", "".join(parts).encode())
    return out / "report.md", out / "report.html"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text).strip("_") or "metric"
