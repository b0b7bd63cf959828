"""Reports: JSON, markdown tables, plots (matplotlib, Agg) and image grids.

Every eval writes ``<name>.json`` (all numbers, full precision) and ``<name>.md`` (a table, rounded half up).
The plots are the paper's: per-category bars with 95% intervals (Table 1 / DrawBench), and CLIP score against
training step per model (Figures 4 and 5).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON (parent folders created)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    return p


def markdown_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A GitHub markdown table; cells are str()-ed, pipes escaped."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_markdown(text: str, path: str | Path, title: str | None = None) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text((f"# {title}\n\n" if title else "") + text)
    return p


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    return plt


def plot_category_bars(results: Mapping[str, Mapping[str, Mapping[str, Any]]], path: str | Path,
                       title: str = "share correct (%)") -> Path:
    """Grouped bars: ``results[model][category] = {"percent": p, "ci95": [lo, hi]}``; error bars = 95% CI."""
    import numpy as np

    plt = _plt()
    models = list(results)
    cats: list[str] = []
    for m in models:
        cats += [c for c in results[m] if c not in cats]
    x = np.arange(len(cats))
    w = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.6 * len(cats) * max(1, len(models)) ** 0.5)), 4.5))
    for j, m in enumerate(models):
        p = np.array([results[m].get(c, {}).get("percent", np.nan) for c in cats], dtype=float)
        ci = np.array([results[m].get(c, {}).get("ci95", [np.nan, np.nan]) for c in cats], dtype=float)
        err = np.abs(np.stack([p - ci[:, 0], ci[:, 1] - p]))
        ax.bar(x + (j - (len(models) - 1) / 2) * w, p, w, yerr=err, capsize=2, label=m)
    ax.set_xticks(x, cats, rotation=30, ha="right")
    ax.set_ylabel(title)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def read_points(path: str | Path) -> list[tuple[str, int, float]]:
    """``(model, step, score)`` rows from a TSV/CSV with those columns or a JSONL of such objects."""
    import csv

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"points file {str(p)!r} not found")
    if p.suffix == ".jsonl":
        rows = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    else:
        rows = list(csv.DictReader(p.open(newline=""), delimiter="\t" if p.suffix == ".tsv" else ","))
    try:
        return [(str(r["model"]), int(r["step"]), float(r["score"])) for r in rows]
    except (KeyError, ValueError) as e:
        raise ValueError(f"{p}: expected model, step, score in every row ({e})") from e


def plot_clip_vs_step(points: Sequence[tuple[str, int, float]], path: str | Path,
                      ylabel: str = "CLIP score") -> Path:
    """One line per model through ``(model, step, score)`` points (the paper's Figures 4 and 5)."""
    plt = _plt()
    by_model: dict[str, list[tuple[int, float]]] = {}
    for m, s, v in points:
        by_model.setdefault(m, []).append((int(s), float(v)))
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, pts in by_model.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def image_grid(images: Mapping[str, Sequence[Any]], path: str | Path, title: str = "",
               cell: int = 128, pad: int = 4, label_h: int = 14) -> Path:
    """One prompt across models: a row per model (label on the left), its images across. PIL only."""
    from PIL import Image, ImageDraw

    models = list(images)
    ncol = max((len(v) for v in images.values()), default=0)
    label_w = max([len(m) for m in models] + [4]) * 7 + pad
    top = label_h + pad if title else pad
    W = label_w + ncol * (cell + pad) + pad
    H = top + len(models) * (cell + pad)
    grid = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((pad, 2), title[: W // 6], fill="black")
    for r, m in enumerate(models):
        y = top + r * (cell + pad)
        draw.text((pad, y + cell // 2 - 6), m, fill="black")
        for c, im in enumerate(images[m]):
            grid.paste(im.convert("RGB").resize((cell, cell)), (label_w + c * (cell + pad), y))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out
