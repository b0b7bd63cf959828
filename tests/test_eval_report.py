"""Reports: markdown tables, plots (Agg), image grids, the plot-clip command."""

from __future__ import annotations

import pytest
from PIL import Image
from typer.testing import CliRunner

from recaption.cli import app
from recaption.eval.report import image_grid, markdown_table, plot_category_bars, read_points


def test_markdown_table_escapes_pipes():
    md = markdown_table([["a|b", 1.5]], ["name", "value"])
    assert md.splitlines() == ["| name | value |", "| --- | --- |", "| a\\|b | 1.5 |"]


def test_category_bars_and_grid(tmp_path):
    res = {"m1": {"Colors": {"percent": 60, "ci95": [50, 70]}, "overall": {"percent": 55, "ci95": [50, 60]}},
           "m2": {"Colors": {"percent": 40, "ci95": [30, 50]}}}
    p = plot_category_bars(res, tmp_path / "bars.png")
    assert Image.open(p).size[0] > 300
    ims = {"model-a": [Image.new("RGB", (64, 64), "red")] * 3, "b": [Image.new("RGB", (64, 64), "blue")] * 2}
    g = Image.open(image_grid(ims, tmp_path / "grid.png", title="a red circle", cell=32, pad=2))
    w, h = g.size
    assert h == 14 + 2 + 2 * (32 + 2) and w > 3 * 32
    # the first image of model-a sits in row 0, model b's in row 1
    label_w = max(len("model-a"), 4) * 7 + 2
    assert g.getpixel((label_w + 5, 14 + 2 + 5))[:3] == (255, 0, 0)
    assert g.getpixel((label_w + 5, 14 + 2 + 34 + 5))[:3] == (0, 0, 255)


def test_plot_clip_command(tmp_path):
    pts = tmp_path / "pts.tsv"
    pts.write_text("model\tstep\tscore\nalt\t100\t20.5\nalt\t200\t22.0\ndsc\t100\t21.0\ndsc\t200\t25.1\n")
    assert read_points(pts)[1] == ("alt", 200, 22.0)
    out = tmp_path / "clip.png"
    r = CliRunner().invoke(app, ["eval", "plot-clip", "--points", str(pts), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.stat().st_size > 1000
    bad = tmp_path / "bad.tsv"
    bad.write_text("model\tstep\nalt\t1\n")
    with pytest.raises(ValueError, match="model, step, score"):
        read_points(bad)
