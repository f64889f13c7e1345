"""Results table and report: every row and metric present, plots and grids embedded."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from lightning_cat.experiment.report import (
    ID_COLUMNS,
    budget_curves,
    image_grid,
    metric_columns,
    summarize,
    write_report,
    write_results,
)

ROWS = [
    {
        "subject": "s",
        "protection": p,
        "method": p,
        "defense": d,
        "customization": "lora",
        "prompt": "a photo of sks person",
        "linf_255": 8 if p != "clean" else 0,
        "fid": f,
        "clip_iqa": q,
    }
    for (p, d, f, q) in [
        ("clean", "none", 10.0, 0.7),
        ("advdm_plus", "none", 30.0, 0.3),
        ("advdm_plus", "cat:both", 15.0, 0.6),
    ]
]


def test_results_files_round_trip(tmp_path):
    csv_path, json_path = write_results(ROWS, tmp_path)
    with open(csv_path) as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 3 and list(table[0])[: len(ID_COLUMNS)] == list(ID_COLUMNS)
    assert float(table[1]["fid"]) == 30.0
    assert json.loads(json_path.read_text()) == ROWS
    assert metric_columns(ROWS) == ["linf_255", "fid", "clip_iqa"]


def test_report_has_table_plots_and_grids(tmp_path):
    for name, color in [("clean", "red"), ("protected", "blue"), ("sample", "green")]:
        Image.new("RGB", (64, 64), color).save(tmp_path / f"{name}.png")
    grid = image_grid(
        [
            ("advdm_plus", [tmp_path / "clean.png", tmp_path / "protected.png", tmp_path / "sample.png"]),
            ("clean", [tmp_path / "clean.png", None, tmp_path / "sample.png"]),
        ],
        ["clean", "protected", "none"],
        tmp_path / "grids" / "s.png",
        cell=64,
    )
    with Image.open(grid) as image:
        assert image.size == (110 + 3 * 64, 22 + 2 * 64)
        assert image.getpixel((110 + 64 + 32, 22 + 32))[2] > 200  # the protected (blue) tile is in place
    long = image_grid([("advdm_plus@eps_255=16", [tmp_path / "clean.png"])], ["clean"], tmp_path / "l.png", cell=64)
    with Image.open(long) as image:  # a sweep point's label is not cut: the label column widens
        assert image.size[0] > 110 + 64 and image.getpixel((image.size[0] - 32, 22 + 32))[0] > 200
    md, page = write_report(ROWS, tmp_path, title="demo", notes=["tiny model"], grids=[grid])
    text = md.read_text()
    assert "| advdm_plus | cat:both |" in text and "plots/fid.png" in text and "grids/s.png" in text
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["clip_iqa.png", "fid.png", "linf_255.png"]
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 4 and "<td>15</td>" in html


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_values_do_not_break_the_report(tmp_path, value):
    rows = [dict(ROWS[0], fid=value)]
    write_results(rows, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text(), parse_constant=pytest.fail)[0]["fid"] is None
    md, _ = write_report(rows, tmp_path)
    assert str(value) in md.read_text()


def test_summary_averages_each_cell_over_its_prompts():
    second = [{**row, "prompt": "a dslr portrait of sks person", "fid": row["fid"] + 2.0} for row in ROWS]
    second[0]["clip_iqa"] = float("nan")  # non-finite values are left out of the mean
    summary = summarize(ROWS + second)
    assert [(r["protection"], r["defense"]) for r in summary] == [(r["protection"], r["defense"]) for r in ROWS]
    assert "prompt" not in summary[0]
    assert summary[1]["fid"] == pytest.approx(31.0) and summary[0]["clip_iqa"] == pytest.approx(0.7)
    assert summary[2]["linf_255"] == 8


def test_a_budget_sweep_gets_metric_against_budget_curves(tmp_path):
    rows = [
        {"subject": "s", "protection": "clean", "method": "clean", "defense": d, "customization": "lora",
         "prompt": "p", "eps_255": 0.0, "fid": 10.0}
        for d in ("none", "cdl")
    ]  # fmt: skip
    rows += [
        {"subject": "s", "protection": f"advdm_plus@eps_255={e}", "method": "advdm_plus", "defense": d,
         "customization": "lora", "prompt": "p", "eps_255": float(e), "fid": 10.0 + e * (2 if d == "none" else 1)}
        for e in (4, 8, 16)
        for d in ("none", "cdl")
    ]  # fmt: skip
    curves = budget_curves(rows)
    assert sorted(curves) == [("advdm_plus", "cdl"), ("advdm_plus", "none")]
    assert list(curves[("advdm_plus", "none")]) == [0.0, 4.0, 8.0, 16.0]  # the clean cells start each curve
    _, html = write_report(rows, tmp_path)
    assert (tmp_path / "plots" / "fid-vs-budget.png").is_file()
    assert "Metrics against the budget" in html.read_text()
    assert budget_curves(ROWS) == {}  # one budget per method: no curves
