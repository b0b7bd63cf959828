"""Benchmark (exploratory): one round of self-training for the descriptive (or short) stage, in the shapes world.

A descriptive (``--stage short``: short) checkpoint captions the bench's train images it was not fine-tuned on (no truth: its own captions,
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
    ap.add_argument("--init", required=True, help="the stage's checkpoint (teacher and starting point)")
    ap.add_argument("--stage", default="descriptive", choices=("short", "descriptive"))
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

    from recaption.captioners.train_prefix import CaptionerTrainConfig, train_captioner
    from recaption.world.dataset import generate_records

    train = list(generate_records(args.train_n, seed=0))
    held = list(generate_records(args.heldout_n, seed=1))
    res: dict = {"args": vars(args)}
    extra = parse_options(args.train_option)
    # the library's self-training: the true subset is the one the stage itself chooses (finetune_size, seed),
    # never the init's finetune_keys.json, so a second round reads no more truth than the first
    cfg = CaptionerTrainConfig(stage=args.stage, steps=100000, max_minutes=args.minutes, self_train=True,
                               self_train_views=args.teacher_views, **extra)
    t = time.time()
    res["train"] = train_captioner(train, args.out, cfg, init=args.init, device="cpu", resume=False)
    res["train"]["wall_seconds"] = round(time.time() - t, 1)
    res["true_pairs"] = res["train"]["true_examples"]
    images = [r.pil() for r in held]
    figs = ("attribute_recall", "hallucination_rate", "count_accuracy", "relation_accuracy", "recall_fill",
            "fill_accuracy_given_object", "size_accuracy_given_object", "objects_named", "names_main_subjects",
            "words_per_caption", "words_max")
    for name, ckpt in (("teacher", args.init), ("student", args.out)):
        for views in (1, 9):
            rep = caption_and_audit(ckpt, held, images, args.stage, 64,
                                    decode={"views": views, "combine": "features"})
            res[f"{name}_views{views}"] = {k: rep.get(k) for k in figs}
            print(name, views, json.dumps(res[f"{name}_views{views}"]), flush=True)
    with open(f"{args.out}.json", "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
