"""CLIP score against training step, per model and caption field: the paper's Figures 4 and 5.

For every t2i run given and every one of its checkpoints that holds EMA weights, images are generated from
a fixed set of evaluation captions of each field (the paper: the ground-truth alt-text, and the descriptive
synthetic captions of the same images) and scored by a CLIP against the caption that made them. Same seeds
for every checkpoint and model, so the curves differ only by the weights. Writes ``curve.json``,
``curve.md``, ``points_<field>.tsv`` (model, step, score: ``recaption eval plot-clip`` reads it) and one
plot per field, ``clip_vs_step_<field>.png``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from recaption.eval.clipscore import aggregate_score, clip_scores, load_pairs

log = logging.getLogger(__name__)


def parse_model_specs(specs: list[str]) -> dict[str, str]:
    """``NAME=DIR`` or ``DIR`` (named by its folder) -> {name: dir}; names must be unique."""
    out: dict[str, str] = {}
    for spec in specs:
        name, _, d = spec.partition("=") if "=" in spec else (Path(spec.rstrip("/")).name, "", spec)
        if not name or not d:
            raise ValueError(f"model {spec!r}: expected NAME=DIR or DIR")
        if name in out:
            raise ValueError(f"model name {name!r} given twice (use NAME=DIR to tell them apart)")
        out[name] = d
    return out


def clip_curve(models: dict[str, str], clip: str, records: str, fields: list[str], *, limit: int = 100,
               seed: int = 0, guidance: float = 2.0, steps: int = 25, sampler: str = "ddim",
               batch_size: int = 64, device: str = "cpu", out_dir: str | Path | None = None,
               progress: bool = True) -> dict[str, Any]:
    """CLIP score of each model's checkpoints on the first ``limit`` records' captions of each field.

    ``models``: {name: t2i run directory}; each needs checkpoints saved with EMA weights (runs of this
    version do). ``clip``: any CLIP ``recaption.clip.load_clip`` takes (the paper's ViT-B/32 by default on
    real data; in the world, an instrument CLIP trained on the truth). Returns ``{"points": {field:
    [[model, step, score], ...]}, ...}`` and, with ``out_dir``, writes the reports and plots.
    """
    from tqdm.auto import tqdm

    from recaption.clip import load_clip
    from recaption.t2i.generate import T2IPipeline, checkpoint_steps

    pairs = load_pairs(fields, records=records, limit=limit)
    prompts = {f: [t for t in pairs.texts[f] if t] for f in fields}
    empty = [f for f, p in prompts.items() if not p]
    if empty:
        raise ValueError(f"{records}: no captions in field(s) {', '.join(empty)}")
    plan = {name: checkpoint_steps(d) for name, d in models.items()}
    for name, ck in plan.items():
        if not ck:
            raise FileNotFoundError(f"{models[name]}: no checkpoints with EMA weights (checkpoints/step-*/unet_ema); "
                                    "train with this version and keep_checkpoints high enough for a curve")
    encoder = load_clip(clip, device=device)
    result: dict[str, Any] = {"clip": clip, "records": records, "fields": fields, "n_prompts": {f: len(p) for f, p in
                              prompts.items()}, "seed": seed, "guidance": guidance, "sample_steps": steps,
                              "sampler": sampler, "models": models, "points": {f: [] for f in fields},
                              "unclamped_means": {f: [] for f in fields}, "seconds": 0.0}
    t0 = time.perf_counter()
    bar = tqdm(total=sum(len(v) for v in plan.values()) * len(fields), unit="ckpt-field", desc="clip curve",
               disable=not progress)
    for name, ck in plan.items():
        pipe = T2IPipeline.from_pretrained(models[name], device=device)  # VAE and text encoder loaded once
        for step in ck:
            pipe.use_checkpoint(models[name], step)
            for f in fields:
                images = pipe(prompts[f], seed=seed, guidance=guidance, steps=steps, sampler=sampler,
                              batch_size=batch_size)
                per, _ = clip_scores(encoder, images, prompts[f])
                score = aggregate_score(per)
                result["points"][f].append([name, step, round(score, 4)])
                # the score clamps a negative mean at 0 (torchmetrics); keep the mean too, to tell zeros apart
                result["unclamped_means"][f].append([name, step, round(sum(per) / len(per), 4)])
                log.info("%s step %d field %s: CLIP score %.2f", name, step, f, score)
                bar.update(1)
    bar.close()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if out_dir:
        write_curve(result, Path(out_dir))
    return result


def curve_table(result: dict[str, Any]) -> str:
    """Markdown: a row per (model, step), a column per field."""
    from recaption.eval.report import markdown_table

    fields = result["fields"]
    cells: dict[tuple[str, int], dict[str, float]] = {}
    for f in fields:
        for m, s, v in result["points"][f]:
            cells.setdefault((m, s), {})[f] = v
    rows = [[m, s, *(f"{cells[(m, s)][f]:.2f}" if f in cells[(m, s)] else "" for f in fields)]
            for (m, s) in sorted(cells)]
    return markdown_table(rows, ["model", "step", *(f"CLIP score: {f}" for f in fields)])


def write_curve(result: dict[str, Any], out: Path) -> None:
    """``curve.json``, ``curve.md``, and per field ``points_<field>.tsv`` and ``clip_vs_step_<field>.png``."""
    from recaption.eval import report

    out.mkdir(parents=True, exist_ok=True)
    report.write_json(result, out / "curve.json")
    report.write_markdown(curve_table(result), out / "curve.md",
                          title=f"CLIP score against training step ({result['clip']}, guidance {result['guidance']})")
    for f in result["fields"]:
        safe = f.replace(":", "_").replace("/", "_")
        lines = ["model\tstep\tscore"] + [f"{m}\t{s}\t{v}" for m, s, v in result["points"][f]]
        (out / f"points_{safe}.tsv").write_text("\n".join(lines) + "\n")
        report.plot_clip_vs_step([tuple(p) for p in result["points"][f]], out / f"clip_vs_step_{safe}.png",
                                 ylabel=f"CLIP score against '{f}' captions")
