"""The world's jobs behind the command line: parse a dataset, write the prompt suite, judge images, the demo.

Image naming for :func:`judge_images`: a file ``<prompt_id>.png`` or ``<prompt_id>_<k>.png`` (k = sample
number, e.g. ``test-colors-003_0.png``) is judged against that prompt; any image extension PIL reads works.
"""

from __future__ import annotations

import json
import logging
import os
import random
import statistics
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

from recaption.world.captions import DETAIL_KINDS, detail_kinds
from recaption.world.scene import Scene

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class WorldJobError(ValueError):
    """A problem with a job's input (the message names it); the command line prints it as one line."""


def parse_dataset(input: str, out: str, *, format: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Write the oracle's reading of every record's image to ``out`` (JSONL: key, scene[, exact]).

    When a record carries its true scene (a world dataset), the line also says whether the reading is exact,
    and the summary gives the exact-scene rate.
    """
    from tqdm.auto import tqdm

    from recaption.io import list_shards, read_records
    from recaption.world.oracle import parse

    list_shards(input, format)  # a bad input fails here, before any output
    n = exact = with_truth = 0
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for rec in tqdm(read_records(input, format), desc="parse", unit="img", disable=not progress):
            scene = parse(rec.pil())
            line: dict[str, Any] = {"key": rec.key, "scene": scene.to_dict()}
            truth = rec.meta.get("world", {}).get("scene") if isinstance(rec.meta.get("world"), dict) else None
            if truth is not None:
                ok = scene.same_as(Scene.from_dict(truth))
                line["exact"] = ok
                exact += ok
                with_truth += 1
            f.write(json.dumps(line) + "\n")
            n += 1
    return {"records": n, "out": str(out), "with_truth": with_truth,
            "exact_rate": round(exact / with_truth, 4) if with_truth else None}


def write_prompts(out: str, split: str = "all") -> dict[str, Any]:
    """Write the prompt suite (``split`` = val, test or all) as JSONL; returns counts per category."""
    from recaption.world.prompts import prompt_suite

    prompts = prompt_suite(split)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps(p.to_dict()) + "\n")
    return {"prompts": len(prompts), "out": str(out), "split": split,
            "categories": dict(Counter(p.category for p in prompts))}


def prompt_id_of(filename: str, ids: set[str]) -> str | None:
    """The prompt id an image file is named after (``<id>.png`` or ``<id>_<k>.png``), or None."""
    stem = Path(filename).stem
    if stem in ids:
        return stem
    head, _, tail = stem.rpartition("_")
    return head if head in ids and tail.isdigit() else None


def judge_images(prompts_file: str, images: str, out: str, *, progress: bool = True) -> dict[str, Any]:
    """Judge every image in folder ``images`` against the prompt it is named after; JSONL verdicts to ``out``.

    Returns the accuracy overall and per category. Images whose name matches no prompt are an error (named).
    """
    from PIL import Image
    from tqdm.auto import tqdm

    from recaption.world.judge import judge
    from recaption.world.prompts import load_prompts

    if not os.path.isdir(images):
        raise FileNotFoundError(f"no such image folder: {images}")
    prompts = {p.id: p for p in load_prompts(prompts_file)}
    files = sorted(f for f in os.listdir(images) if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise WorldJobError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    unknown = [f for f in files if prompt_id_of(f, set(prompts)) is None]
    if unknown:
        raise WorldJobError(f"{images}: {len(unknown)} image(s) named after no prompt in {prompts_file}, e.g. "
                        f"{unknown[0]!r}; name images <prompt_id>_<k>.png")
    per_cat: dict[str, list[bool]] = {}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for name in tqdm(files, desc="judge", unit="img", disable=not progress):
            p = prompts[prompt_id_of(name, set(prompts))]
            try:
                img = Image.open(os.path.join(images, name)).convert("RGB")
            except Exception as e:  # PIL raises many kinds for a bad file
                raise WorldJobError(f"{os.path.join(images, name)}: cannot read image: {e}") from e
            v = judge(img, p)
            f.write(json.dumps({"image": name, "category": p.category, "text": p.text, **v.to_dict()}) + "\n")
            per_cat.setdefault(p.category, []).append(v.correct)
    allv = [x for v in per_cat.values() for x in v]
    return {"images": len(allv), "accuracy": round(sum(allv) / len(allv), 4), "out": str(out),
            "per_category": {c: round(sum(v) / len(v), 4) for c, v in sorted(per_cat.items())}}


# -- the demo: the project's main job for now -----------------------------------------------------------------
def _wrap(draw: Any, text: str, font: Any, width: int) -> list[str]:
    lines: list[str] = []
    for para in text.split("\n"):
        words, cur = para.split(), ""
        for w in words:
            trial = (cur + " " + w).strip()
            if draw.textlength(trial, font=font) <= width or not cur:
                cur = trial
            else:
                lines.append(cur)
                cur = w
        lines.append(cur)
    return lines


def contact_sheet(records: list[Any], path: str, *, cols: int = 3, image_px: int = 192,
                  tile_w: int = 420) -> str:
    """A PNG grid of samples: each image (upscaled) over its alt-text, true short and descriptive captions."""
    from PIL import Image, ImageDraw, ImageFont

    from recaption.world import truth_caption

    font = ImageFont.load_default(size=13)
    bold = ImageFont.load_default(size=14)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad, line_h = 10, 16
    tiles = []
    for rec in records:
        blocks = [("alt-text", rec.captions.get("alt", "")), ("short (truth)", truth_caption(rec, "short")),
                  ("descriptive (truth)", truth_caption(rec, "descriptive"))]
        lines: list[tuple[str, Any, tuple[int, int, int]]] = [(rec.key, bold, (0, 0, 0))]
        for label, text in blocks:
            lines.append((label + ":", bold, (30, 60, 160)))
            lines += [(ln, font, (20, 20, 20)) for ln in _wrap(scratch, text, font, tile_w - 2 * pad)]
        tiles.append((rec, lines))
    rows = [tiles[i:i + cols] for i in range(0, len(tiles), cols)]
    heights = [pad + image_px + pad + max(len(t[1]) for t in row) * line_h + pad for row in rows]
    sheet = Image.new("RGB", (cols * tile_w, sum(heights)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = 0
    for row, h in zip(rows, heights, strict=True):
        for c, (rec, lines) in enumerate(row):
            x = c * tile_w
            img = rec.pil().resize((image_px, image_px), Image.NEAREST)
            ix = x + (tile_w - image_px) // 2
            sheet.paste(img, (ix, y + pad))
            draw.rectangle([ix - 1, y + pad - 1, ix + image_px, y + pad + image_px], outline=(120, 120, 120))
            ty = y + pad + image_px + pad
            for text, f, color in lines:
                draw.text((x + pad, ty), text, font=f, fill=color)
                ty += line_h
            draw.rectangle([x, y, x + tile_w - 1, y + h - 1], outline=(200, 200, 200))
        y += h
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return str(path)


def describe_dataset(spec: str, format: str | None = None, examples: int = 3) -> dict[str, Any]:
    """What is in a world dataset: counts, caption lengths, scene statistics, alt-text detail rates."""
    from recaption.io import read_records
    from recaption.world import record_scene, truth_caption

    n = 0
    words: dict[str, list[int]] = {"alt": [], "short": [], "descriptive": []}
    objs: Counter[int] = Counter()
    shapes: Counter[str] = Counter()
    colors: Counter[str] = Counter()
    backgrounds: Counter[str] = Counter()
    grounds: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    signs = groups = nbytes = 0
    ex = []
    for rec in read_records(spec, format):
        scene = record_scene(rec)
        n += 1
        nbytes += len(rec.image or b"")
        words["alt"].append(len(rec.captions["alt"].split()))
        for k in ("short", "descriptive"):
            words[k].append(len(truth_caption(rec, k).split()))
        objs[len(scene.objects)] += 1
        shapes.update(o.shape for o in scene.objects)
        colors.update(o.color for o in scene.objects)
        backgrounds[scene.background] += 1
        grounds[scene.ground] += 1
        signs += scene.sign is not None
        groups += any(v > 1 for v in scene.counts().values())
        kinds.update(detail_kinds(rec.captions["alt"], scene))
        if len(ex) < examples:
            ex.append({"key": rec.key, "alt": rec.captions["alt"], "short": truth_caption(rec, "short"),
                       "descriptive": truth_caption(rec, "descriptive")})
    if n == 0:
        raise ValueError(f"{spec}: the dataset is empty")

    def stats(v: list[int]) -> dict[str, float]:
        return {"mean": round(statistics.fmean(v), 1), "min": min(v), "max": max(v)}

    return {"records": n, "image_bytes": nbytes, "caption_words": {k: stats(v) for k, v in words.items()},
            "objects_per_scene": dict(sorted(objs.items())), "shapes": dict(shapes.most_common()),
            "colors": dict(colors.most_common()), "backgrounds": dict(backgrounds.most_common()),
            "grounds": dict(grounds.most_common()), "with_sign": round(signs / n, 3),
            "with_identical_objects": round(groups / n, 3),
            "alt_detail_rates": {k: round(kinds[k] / n, 3) for k in DETAIL_KINDS}, "examples": ex}


def run_demo(out: str, n: int = 200, seed: int = 0, *, format: str = "wds", sheet_samples: int = 12,
             progress: bool = True) -> dict[str, Any]:
    """The main job for now: write a world dataset under ``out/data``, describe it, draw ``out/contact_sheet.png``."""
    from recaption.io import read_records
    from recaption.world.dataset import WorldConfig, write_dataset

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    data = os.path.join(out, "data")
    made = write_dataset(data, n, WorldConfig(seed=seed), format=format, shard_size=max(100, min(1000, n)),
                         workers=2 if n >= 2000 else 1, progress=progress, resume=False)
    summary = describe_dataset(data, format)
    picks = sorted(random.Random(seed).sample(range(n), min(sheet_samples, n)))
    chosen = [r for i, r in enumerate(read_records(data, format)) if i in set(picks)]
    sheet = contact_sheet(chosen, os.path.join(out, "contact_sheet.png"))
    summary.update({"data": data, "format": format, "seconds": made["seconds"], "contact_sheet": sheet})
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    """A human-readable report of :func:`describe_dataset` / :func:`run_demo`."""
    cw = s["caption_words"]
    out = [f"{s['records']} records ({s['image_bytes'] / 1e6:.2f} MB of PNG) in {s.get('data', '')}",
           "caption words (mean / min / max): " + "; ".join(
               f"{k} {v['mean']} / {v['min']} / {v['max']}" for k, v in cw.items()),
           f"objects per scene: {s['objects_per_scene']}",
           f"shapes: {s['shapes']}", f"colours: {s['colors']}", f"backgrounds: {s['backgrounds']}",
           f"grounds: {s['grounds']}", f"with a sign: {s['with_sign']:.1%}   "
           f"with identical objects: {s['with_identical_objects']:.1%}",
           "alt-text mentions (rate): " + ", ".join(f"{k} {v:.1%}" for k, v in s["alt_detail_rates"].items())]
    for e in s["examples"]:
        out.append(f"\n[{e['key']}]\n  alt:         {e['alt']}\n  short:       {e['short']}\n  descriptive: "
                   + "\n               ".join(textwrap.wrap(e["descriptive"], 100)))
    if "contact_sheet" in s:
        out.append(f"\ncontact sheet: {s['contact_sheet']}")
    return "\n".join(out)
