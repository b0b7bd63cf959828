"""Benchmark (exploratory): one round of self-training for the descriptive stage, in the shapes world.

A descriptive checkpoint captions the bench's train images it was not fine-tuned on (no truth: its own captions,
optionally with test-time views); it is then fine-tuned further on those captions together with its own fine-tune
subset's true captions (the only truth the captioner ever reads), and both checkpoints are audited on the held-out
scenes. The question: does seeing 20x more images, with ~88%-right captions, teach the tower and LM what the 1,000
true captions alone do not (noisy student, Xie et al. 2020; the shift augmentation is the student's noise)?

    python bench/captioner_selftrain.py --init bench_out/cap/descriptive --out bench_out/selftrain --minutes 18
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", required=True, help="the descriptive checkpoint (teacher and starting point)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-n", type=int, default=20000)
    ap.add_argument("--heldout-n", type=int, default=1000)
    ap.add_argument("--minutes", type=float, default=18.0)
    ap.add_argument("--teacher-views", type=int, default=1, help="test-time views of the teacher's captions")
    ap.add_argument("--train-option", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_captioner import caption_and_audit, parse_options

    from recaption.captioners.clip_prefix import load_clip_prefix, set_decode
    from recaption.captioners.train_prefix import CaptionerTrainConfig, train_captioner
    from recaption.world.dataset import generate_records

    train = list(generate_records(args.train_n, seed=0))
    held = list(generate_records(args.heldout_n, seed=1))
    with open(os.path.join(args.init, "finetune_keys.json")) as f:
        subset = set(json.load(f))
    pairs = {r.key: r.meta["world"]["truth"]["descriptive"] for r in train if r.key in subset}  # its own subset
    others = [r for r in train if r.key not in subset]
    res: dict = {"args": vars(args), "true_pairs": len(pairs)}
    t = time.time()
    teacher = set_decode(load_clip_prefix(args.init), batch_size=64, views=args.teacher_views,
                         combine="features")
    for i in range(0, len(others), 1000):
        chunk = others[i:i + 1000]
        for r, c in zip(chunk, teacher.caption([r.pil() for r in chunk], "descriptive"), strict=True):
            pairs[r.key] = c
        logging.info("teacher captions: %d / %d", min(i + 1000, len(others)), len(others))
    res["teacher_seconds"] = round(time.time() - t, 1)
    extra = parse_options(args.train_option)
    cfg = CaptionerTrainConfig(stage="descriptive", steps=100000, max_minutes=args.minutes, **extra)
    t = time.time()
    res["train"] = train_captioner(train, args.out, cfg, init=args.init, pairs=pairs, device="cpu", resume=False)
    res["train"]["wall_seconds"] = round(time.time() - t, 1)
    images = [r.pil() for r in held]
    figs = ("attribute_recall", "hallucination_rate", "count_accuracy", "relation_accuracy", "recall_fill",
            "fill_accuracy_given_object", "size_accuracy_given_object", "objects_named", "names_main_subjects")
    for name, ckpt in (("teacher", args.init), ("student", args.out)):
        for views in (1, 9):
            rep = caption_and_audit(ckpt, held, images, "descriptive", 64,
                                    decode={"views": views, "combine": "features"})
            res[f"{name}_views{views}"] = {k: rep.get(k) for k in figs}
            print(name, views, json.dumps(res[f"{name}_views{views}"]), flush=True)
    with open(f"{args.out}.json", "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
