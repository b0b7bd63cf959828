"""Benchmark one captioner stage alone: fine-tune from a checkpoint on the bench's world train set, then audit.

For comparing variants of a later stage from the same earlier checkpoint (``bench_captioner.py`` runs all three
stages): the train set is the bench's (world seed 0), the held-out set its (seed 1), the audit the same; the
descriptive stage also reports the fill probe of ``probe_captioner.py lm`` on held-out scenes (truth used to
measure only). Example, the descriptive stage of a bench run continued from its own short checkpoint::

    python bench/captioner_stage.py --init bench_out/cap/short --out bench_out/desc_variant --minutes 18
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
    ap.add_argument("--init", required=True, help="the checkpoint to fine-tune")
    ap.add_argument("--out", required=True)
    ap.add_argument("--stage", default="descriptive", choices=("short", "descriptive"))
    ap.add_argument("--train-n", type=int, default=20000)
    ap.add_argument("--heldout-n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=100000, help="steps (the time box usually ends the stage first)")
    ap.add_argument("--minutes", type=float, default=18.0, help="time box (0: none)")
    ap.add_argument("--lr", type=float, default=0.0, help="0: the stage's default")
    ap.add_argument("--finetune-size", default="0.05")
    ap.add_argument("--vision-lr-scale", type=float, default=1.0)
    ap.add_argument("--train-option", action="append", default=[], metavar="NAME=VALUE",
                    help="any other CaptionerTrainConfig field (a JSON value), e.g. bow_weight=1.0")
    ap.add_argument("--extra-layer", type=int, action="append", default=[],
                    help="add this tower hidden state to the prefix (a multi-level prefix; repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64, help="captioning batch")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_captioner import caption_and_audit, parse_options
    from probe_captioner import probe_lm

    from recaption.captioners.train_prefix import CaptionerTrainConfig, train_captioner
    from recaption.world.dataset import generate_records

    extra = parse_options(args.train_option)
    cfg = CaptionerTrainConfig(stage=args.stage, steps=args.steps, lr=args.lr, max_minutes=args.minutes,
                               finetune_size=args.finetune_size, vision_lr_scale=args.vision_lr_scale, **extra)
    t = time.time()
    train = list(generate_records(args.train_n, seed=0))
    held = list(generate_records(args.heldout_n, seed=1))
    res: dict = {"args": vars(args), "data_s": round(time.time() - t, 1)}
    t = time.time()
    res["train"] = train_captioner(train, args.out, cfg, init=args.init, device="cpu", resume=False,
                                   add_layers=args.extra_layer)
    res["train"]["wall_seconds"] = round(time.time() - t, 1)
    report = caption_and_audit(args.out, held, [r.pil() for r in held], args.stage, args.batch_size,
                               captions_out=os.path.join(args.out, f"heldout_{args.stage}.jsonl"))
    res["audit"] = report
    if args.stage == "descriptive":
        res["fill_probe_heldout"] = {k: v for k, v in probe_lm(args.out, "fill", 400, "heldout").items()
                                     if k in ("words", "argmax_accuracy", "mean_probability_by_true_class")}
    keys = ("steps", "wall_seconds", "final_loss")
    figs = ("attribute_recall", "hallucination_rate", "count_accuracy", "relation_accuracy", "recall_shape",
            "recall_color", "recall_size", "recall_fill", "names_main_subjects", "object_precision",
            "objects_named", "size_accuracy_given_object", "fill_accuracy_given_object",
            "degenerate_share", "words_per_caption", "images_per_second")
    res["summary"] = {**{k: res["train"].get(k) for k in keys}, **{k: report.get(k) for k in figs},
                      "fill_probe_argmax": res.get("fill_probe_heldout", {}).get("argmax_accuracy")}
    with open(f"{args.out}.json", "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res["summary"], indent=1))


if __name__ == "__main__":
    main()
