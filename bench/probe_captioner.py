"""Diagnosis in the shapes world: what a clip-prefix captioner knows about an attribute, read with the truth.

These probes use the world's truth labels, so they are measuring instruments, never part of the system under
test (nothing they train is saved). Two of them:

- ``lm``: teacher-force each scene's true descriptive caption up to each of its words for the attribute
  (fill, the one the captioners miss; the i-th fill word names the i-th group of identical objects) and read
  the language model's next-token mass on each class's words. If the rows of the printed table are alike, the
  LM writes that attribute from its prior, whatever the image. ``--source`` picks the scenes: one-object
  scenes of seed 7 (default), the checkpoint's own fine-tune subset of the bench's train set (seed 0; its
  ``finetune_keys.json``), or the bench's held-out set (seed 1). Far better on its fine-tune subset than on
  held-out scenes = the LM memorised its captions rather than learning to read the attribute.
- ``tower``: a linear probe (logistic regression on the mean and max over each hidden state's map, 75/25
  split) of the attribute from every hidden state of the captioner's tuned vision tower (or any CLIP folder).
- ``cell``: the same per object, in scenes of any number of objects, from the token of the object's own cell
  (each hidden state's map adaptive-average-pooled to the world's 3x3 grid, as ``prefix_grid=3`` feeds the LM;
  also max-pooled, and both together): what the LM of a token-per-cell captioner can read about each object.

``python bench/probe_captioner.py lm bench_out/cap/descriptive``;
``python bench/probe_captioner.py tower bench_out/cap/descriptive/clip`` (or ``cell``).
Scenes: world seed 7 (disjoint from the bench's train seed 0 and held-out seed 1).
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any


def one_object_scenes(n_scenes: int, seed: int = 7) -> list[Any]:
    from recaption.world import record_scene
    from recaption.world.dataset import generate_records

    return [r for r in generate_records(n_scenes, seed) if len(record_scene(r).objects) == 1]


def attribute_words(attribute: str) -> dict[str, tuple[str, ...]]:
    """Class -> the words the world's captions use for it (fill only: size words also name signs)."""
    from recaption.world.captions import FILL_WORDS

    if attribute != "fill":
        raise SystemExit(f"the lm probe reads fill only, not {attribute!r}")
    return {k: tuple(v) for k, v in FILL_WORDS.items()}


def probe_records(source: str, ckpt: str, n_scenes: int) -> list[Any]:
    """The scenes of ``--source`` (see the module docstring)."""
    import os

    from recaption.world.dataset import generate_records

    if source == "oneobj":
        return one_object_scenes(n_scenes)
    if source == "heldout":
        return list(generate_records(n_scenes, seed=1))
    if source == "finetune":
        with open(os.path.join(ckpt, "finetune_keys.json")) as f:
            keys = set(json.load(f))
        return [r for r in generate_records(n_scenes, seed=0) if r.key in keys]
    raise SystemExit(f"unknown --source {source!r}: oneobj, finetune or heldout")


def probe_lm(ckpt: str, attribute: str = "fill", n_scenes: int = 1500, source: str = "oneobj") -> dict[str, Any]:
    """Mean next-token mass on each class's words at the attribute's places in the true caption, by true class."""
    import torch

    from recaption.captioners.clip_prefix import clip_features, load_clip_prefix
    from recaption.clip.data import load_pixels
    from recaption.world import record_scene, truth_caption
    from recaption.world.captions import kind_groups

    cap = load_clip_prefix(ckpt)
    cap.model.eval()
    tok = cap.tokenizer
    words = attribute_words(attribute)
    classes = list(words)
    first = {c: sorted({tok(" " + w.split("-")[0], add_special_tokens=False)["input_ids"][0] for w in ws})
             for c, ws in words.items()}
    pattern = re.compile(r"\b(" + "|".join(sorted({w for ws in words.values() for w in ws}, key=len,
                                                    reverse=True)) + r")\b")
    recs = probe_records(source, ckpt, n_scenes)
    feats = clip_features(cap.clip, load_pixels(recs, 64), cap.cfg)
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    table = torch.zeros(len(classes), len(classes))
    n = correct = 0
    mass = 0.0
    with torch.no_grad():
        for r, f in zip(recs, feats, strict=True):
            text = truth_caption(r, "descriptive")
            groups = kind_groups(record_scene(r))
            found = list(pattern.finditer(text))
            if not found or len(found) != len(groups):
                continue
            prefix = cap.model.prefix(f[None].float())
            for m, group in zip(found, groups, strict=True):
                truth = classes.index(getattr(group[0], attribute))
                ids = [bos] + tok(text[:m.start()].rstrip(), add_special_tokens=False)["input_ids"]
                emb = cap.model.lm.get_input_embeddings()(torch.tensor([ids]))
                logits = cap.model.lm(inputs_embeds=torch.cat([prefix, emb], 1)).logits
                p = logits[0, -1].softmax(-1)
                q = torch.tensor([float(p[first[c]].sum()) for c in classes])
                mass += float(q.sum())
                q = q / q.sum()
                table[truth] += q
                n += 1
                correct += int(int(q.argmax()) == truth)
    rows = {c: [round(float(x) / max(1e-9, float(table[i].sum())), 3) for x in table[i]]
            for i, c in enumerate(classes)}
    return {"checkpoint": ckpt, "attribute": attribute, "source": source, "words": n, "classes": classes,
            "word_mass": round(mass / max(1, n), 3), "argmax_accuracy": round(correct / max(1, n), 3),
            "mean_probability_by_true_class": rows}


def tower_hidden_states(clip_dir: str, recs: list[Any]) -> tuple[Any, ...]:
    """Every hidden state of a CLIP folder's vision tower on ``recs``' images (no gradients)."""
    import torch

    from recaption.captioners.clip_prefix import clip_geometry
    from recaption.clip import load_clip
    from recaption.clip.data import load_pixels, normalize

    clip = load_clip(clip_dir)
    clip.model.eval()
    _, mean, std = clip_geometry(clip)
    with torch.no_grad():
        px = normalize(load_pixels(recs, 64), mean, std).to(clip.model.dtype)
        return clip.model.vision_model(pixel_values=px, output_hidden_states=True).hidden_states


def probe_tower(clip_dir: str, attribute: str = "fill", n_scenes: int = 2500, steps: int = 300) -> dict[str, Any]:
    """Held-out accuracy of a linear probe of ``attribute`` on each hidden state of the vision tower."""
    import torch

    from recaption.world import record_scene

    recs = one_object_scenes(n_scenes)
    labels = [getattr(record_scene(r).objects[0], attribute) for r in recs]
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(v) for v in labels])
    hidden = tower_hidden_states(clip_dir, recs)
    train = torch.arange(len(recs)) < int(0.75 * len(recs))
    torch.manual_seed(0)
    out = []
    for i, h in enumerate(hidden):
        x = torch.cat([h[:, 1:].mean(1), h[:, 1:].amax(1)], 1).float()
        out.append({"hidden_state": i, "tokens": int(h.shape[1]) - 1, "dim": int(h.shape[2]),
                    "accuracy": linear_probe(x, y, train, len(classes), steps)})
    majority = float(torch.bincount(y[~train]).max()) / int((~train).sum())
    return {"clip": clip_dir, "attribute": attribute, "scenes": len(recs), "majority": round(majority, 3),
            "probes": out}


def linear_probe(x: Any, y: Any, train: Any, n_classes: int, steps: int = 300) -> float:
    """Held-out accuracy of logistic regression on standardised features ``x`` (rows ``train`` to fit)."""
    import torch

    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-5)
    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.Adam(lin.parameters(), 1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(x[train]), y[train]).backward()
        opt.step()
    return round(float((lin(x[~train]).argmax(1) == y[~train]).float().mean()), 3)


def probe_cells(clip_dir: str, attribute: str = "fill", n_scenes: int = 1500, steps: int = 300,
                grid: int = 3) -> dict[str, Any]:
    """Held-out accuracy of a linear probe of each object's ``attribute`` from its own cell's token.

    Scenes of world seed 7 with any number of objects; the first 75% of the scenes fit, the rest test (an
    object's scene decides its side, so no scene is on both)."""
    import torch

    from recaption.captioners.clip_prefix import token_map
    from recaption.world import record_scene
    from recaption.world.dataset import generate_records

    f = torch.nn.functional
    recs = list(generate_records(n_scenes, seed=7))
    objs = [(i, o.row * grid + o.col, getattr(o, attribute)) for i, r in enumerate(recs)
            for o in record_scene(r).objects]
    classes = sorted({v for *_, v in objs})
    y = torch.tensor([classes.index(v) for *_, v in objs])
    scene = torch.tensor([i for i, _, _ in objs])
    cell = torch.tensor([c for _, c, _ in objs])
    train = scene < int(0.75 * len(recs))
    hidden = tower_hidden_states(clip_dir, recs)
    out = []
    for i, h in enumerate(hidden):
        fmap = token_map(h.float())[1]
        s = fmap.shape[-1]
        avg = f.adaptive_avg_pool2d(fmap, grid).flatten(2).transpose(1, 2)[scene, cell]  # (objects, D)
        mx = f.adaptive_max_pool2d(fmap, grid).flatten(2).transpose(1, 2)[scene, cell]
        out.append({"hidden_state": i, "map": f"{s}x{s}x{fmap.shape[1]}",
                    **{name: linear_probe(x, y, train, len(classes), steps)
                       for name, x in (("avg", avg), ("max", mx), ("avg+max", torch.cat([avg, mx], 1)))}})
    majority = float(torch.bincount(y[~train]).max()) / int((~train).sum())
    return {"clip": clip_dir, "attribute": attribute, "scenes": len(recs), "objects": len(objs),
            "majority": round(majority, 3), "probes": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("lm", "tower", "cell"))
    ap.add_argument("path", help="a clip-prefix checkpoint (lm) or a CLIP folder (tower, cell)")
    ap.add_argument("--attribute", default="fill", help="lm: fill; tower, cell: any Obj field (fill, size, shape, color)")
    ap.add_argument("--scenes", type=int, default=0, help="world scenes (lm oneobj, tower: to draw one-object ones from)")
    ap.add_argument("--source", default="oneobj", choices=("oneobj", "finetune", "heldout"),
                    help="lm: which scenes (see above); finetune reads the bench's 20,000 train scenes")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "lm":
        default_n = {"oneobj": 1500, "finetune": 20000, "heldout": 1000}[args.source]
        res = probe_lm(args.path, args.attribute, args.scenes or default_n, args.source)
    elif args.what == "tower":
        res = probe_tower(args.path, args.attribute, args.scenes or 2500)
    else:
        res = probe_cells(args.path, args.attribute, args.scenes or 1500)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
