"""Benchmark: test-time views of the clip-prefix captioner (``DecodeConfig.views``), paired on one checkpoint.

Captions the bench's held-out world scenes (seed 1, as ``bench_captioner.py``) with one checkpoint, once per decoding
setting, and audits each against the truth: the same weights, so every difference is the decoding's. Example::

    python bench/caption_views.py --ckpt bench_out/cap/descriptive --mode descriptive --views 1,5,9 \\
        --combine probs,features --out bench_out/views_desc.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

FIGURES = ("attribute_recall", "hallucination_rate", "count_accuracy", "relation_accuracy", "recall_fill",
           "fill_accuracy_given_object", "size_accuracy_given_object", "objects_named", "names_main_subjects",
           "words_max", "images_per_second")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--mode", default="descriptive", choices=("short", "descriptive"))
    ap.add_argument("--heldout-n", type=int, default=1000)
    ap.add_argument("--views", default="1,5,9", help="comma-separated view counts")
    ap.add_argument("--combine", default="probs", help="comma-separated: probs, features")
    ap.add_argument("--view-shift", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True, help="JSON of every setting's figures")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_captioner import caption_and_audit

    from recaption.world.dataset import generate_records

    held = list(generate_records(args.heldout_n, seed=1))
    images = [r.pil() for r in held]
    rows = []
    for views in (int(v) for v in args.views.split(",")):
        for combine in (args.combine.split(",") if views > 1 else ["probs"]):
            dec = {"views": views, "combine": combine, "view_shift": args.view_shift}
            rep = caption_and_audit(args.ckpt, held, images, args.mode, args.batch_size, decode=dec)
            rows.append({"decode": dec, **{k: rep.get(k) for k in FIGURES}, "examples": rep["examples"][:1]})
            print(json.dumps(rows[-1]), flush=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
