"""CLIP score: 100 x cosine between CLIP image and text features (the paper's Figures 4 and 5).

The definition is torchmetrics' ``CLIPScore``: per pair ``100 * cos(image, text)``; the reported score is the
mean over pairs, clamped at 0 (``max(mean, 0)``, as torchmetrics clamps its aggregate). Per-pair values are
kept unclamped in the output. Texts longer than the text encoder's limit (77 tokens for OpenAI CLIP) are
truncated; how many were is counted and stated per field, never silent. We do not depend on torchmetrics
(1.9 breaks on transformers 5); the test checks us against transformers' CLIPModel directly.

Inputs (:func:`load_pairs`):

- ``images=DIR, captions=FILE.jsonl``: images named ``<key>.<ext>`` in DIR; each JSONL line holds ``key`` and
  either the caption fields at top level (``{"key": "0001", "alt": "...", "descriptive": "..."}``) or under
  ``captions`` (the record JSON form). Keys without an image, or images without a caption, are reported.
- ``records=SPEC``: any :mod:`recaption.io` dataset; fields are caption names of the records, or
  ``truth:short`` / ``truth:descriptive`` for the world's true captions (an instrument, never a model input).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recaption.eval.stats import bootstrap_mean, fmt_pct

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class ClipPairs:
    """Images (PIL, in key order) and, per field, the text of each key (None where the key lacks it)."""

    keys: list[str]
    images: list[Any]
    texts: dict[str, list[str | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _record_field(rec: Any, name: str) -> str | None:
    if name.startswith("truth:"):
        from recaption.world import truth_caption

        return truth_caption(rec, name.split(":", 1)[1])
    return rec.captions.get(name)


def load_pairs(fields: list[str], images: str | Path | None = None, captions: str | Path | None = None,
               records: str | None = None, limit: int | None = None) -> ClipPairs:
    """Read the image/caption pairs to score (see the module docstring for the two input forms)."""
    from PIL import Image

    if records:
        from recaption.io import read_records

        pairs = ClipPairs([], [], {f: [] for f in fields})
        for rec in read_records(records):
            if rec.image is None:
                pairs.notes.append(f"record {rec.key}: no image ({rec.error})")
                continue
            pairs.keys.append(rec.key)
            pairs.images.append(rec.pil())
            for f in fields:
                pairs.texts[f].append(_record_field(rec, f))
            if limit and len(pairs.keys) >= limit:
                break
        return pairs
    if images is None or captions is None:
        raise ValueError("give --images DIR and --captions FILE.jsonl, or --records SPEC")
    d, c = Path(images), Path(captions)
    if not d.is_dir():
        raise FileNotFoundError(f"images folder {str(d)!r} not found")
    if not c.is_file():
        raise FileNotFoundError(f"captions file {str(c)!r} not found")
    files = {p.stem: p for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
    table: dict[str, dict[str, str]] = {}
    for i, line in enumerate(c.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key = str(row["key"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{c}:{i}: expected a JSON object with a 'key' field ({e})") from e
        caps = row.get("captions") if isinstance(row.get("captions"), dict) else row
        table[key] = {k: v for k, v in caps.items() if isinstance(v, str)}
    pairs = ClipPairs([], [], {f: [] for f in fields})
    missing_img = sorted(set(table) - set(files))
    if missing_img:
        pairs.notes.append(f"{len(missing_img)} caption keys have no image (first: {missing_img[:3]})")
    no_cap = sorted(set(files) - set(table))
    if no_cap:
        pairs.notes.append(f"{len(no_cap)} images have no caption line (first: {no_cap[:3]})")
    for key in sorted(set(files) & set(table)):
        with Image.open(files[key]) as im:
            pairs.images.append(im.convert("RGB"))
        pairs.keys.append(key)
        for f in fields:
            pairs.texts[f].append(table[key].get(f))
        if limit and len(pairs.keys) >= limit:
            break
    return pairs


def clip_scores(encoder: Any, images: list[Any], texts: list[str], batch_size: int = 64) -> tuple[list[float], list[bool]]:
    """Per pair ``100 * cos(image_i, text_i)`` (unclamped), and whether each text was truncated."""
    img = encoder.encode_images(images, batch_size=batch_size)  # (N, D), normalised
    tf = encoder.encode_texts(texts)
    cos = (img * tf.features).sum(-1)  # (N,)
    return (100.0 * cos).tolist(), list(tf.truncated)


def aggregate_score(per_pair: list[float]) -> float:
    """torchmetrics' aggregate: ``max(mean(100 cos), 0)``."""
    return max(sum(per_pair) / len(per_pair), 0.0) if per_pair else float("nan")


def evaluate_clipscore(encoder: Any, pairs: ClipPairs, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """CLIP score of every field (pairs lacking the field are skipped and counted)."""
    out: dict[str, Any] = {"clip": getattr(encoder, "name", ""), "max_text_tokens": encoder.max_text_tokens,
                           "n_images": len(pairs.keys), "notes": list(pairs.notes), "fields": {}}
    for f, texts in pairs.texts.items():
        idx = [i for i, t in enumerate(texts) if t]
        if not idx:
            out["fields"][f] = {"n": 0, "missing": len(texts), "score": None}
            continue
        per, trunc = clip_scores(encoder, [pairs.images[i] for i in idx], [texts[i] for i in idx])
        mean, lo, hi = bootstrap_mean(per, n_boot=n_boot, seed=seed)
        out["fields"][f] = {"score": aggregate_score(per), "mean_unclamped": mean, "ci95": [lo, hi], "n": len(idx),
                            "missing": len(texts) - len(idx), "truncated": int(sum(trunc)),
                            "truncated_share": sum(trunc) / len(trunc),
                            "per_pair": {pairs.keys[i]: s for i, s in zip(idx, per, strict=True)}}
        if any(trunc):
            log.info("%s: %d of %d captions truncated at %d tokens", f, sum(trunc), len(trunc), encoder.max_text_tokens)
    return out


def clipscore_table(result: dict[str, Any]) -> str:
    from recaption.eval.report import markdown_table

    rows = []
    for f, r in result["fields"].items():
        if r.get("score") is None:
            rows.append([f, "", "", 0, r.get("missing", 0), ""])
            continue
        rows.append([f, f"{r['score']:.2f}", f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]", r["n"], r["missing"],
                     f"{r['truncated']} ({fmt_pct(100 * r['truncated_share'])}%)"])
    return markdown_table(rows, ["field", "CLIP score", "95% CI", "n", "missing",
                                 f"truncated at {result['max_text_tokens']} tokens"])


def run_clipscore(clip: str, fields: list[str], out_dir: str | Path | None = None, images: str | None = None,
                  captions: str | None = None, records: str | None = None, limit: int | None = None,
                  device: str = "cpu", n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Load a CLIP (``recaption.clip.load_clip``), score every field, write ``clipscore.json``/``.md``."""
    from recaption.clip import load_clip
    from recaption.eval import report

    pairs = load_pairs(fields, images=images, captions=captions, records=records, limit=limit)
    if not pairs.keys:
        raise ValueError("no image/caption pairs to score" + (f": {'; '.join(pairs.notes)}" if pairs.notes else ""))
    result = evaluate_clipscore(load_clip(clip, device=device), pairs, n_boot=n_boot, seed=seed)
    if out_dir:
        report.write_json(result, Path(out_dir) / "clipscore.json")
        report.write_markdown(clipscore_table(result), Path(out_dir) / "clipscore.md",
                              title=f"CLIP score (100 x cosine, {clip})")
    return result
