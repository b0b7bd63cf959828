"""Benchmark: the clip-prefix captioner end to end in the shapes world.

world dataset (train, seed 0) + held-out dataset (seed 1) -> world CLIP on alt-text -> captioner stage 1
(alt) -> stage 2 (short, fine-tune subset) -> stage 3 (descriptive, fine-tune subset) -> caption the held-out
images with each stage -> audit against the truth; prints training times, audit figures and captioning
throughput, and writes them as JSON (``--json``).

Full run (the issue's targets): ``python bench/bench_captioner.py --train-n 20000 --heldout-n 1000``.
Small check: ``python bench/bench_captioner.py --train-n 2000 --heldout-n 200 --clip-steps 200 --alt-steps 300
--short-steps 150 --desc-steps 200``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import time


def parse_options(items: list[str]) -> dict:
    """``["NAME=VALUE", ...]`` -> ``{NAME: VALUE}``, each value read as JSON where it parses (else a string)."""
    out = {}
    for kv in items:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise SystemExit(f"option {kv!r}: want NAME=VALUE")
        try:
            out[k] = json.loads(v)
        except ValueError:  # a plain string
            out[k] = v
    return out


def caption_and_audit(ckpt: str, held: list, images: list, mode: str, batch_size: int,
                      device: str = "cpu", captions_out: str | None = None, decode: dict | None = None) -> dict:
    """Caption the held-out ``images`` (batched, greedy) with a checkpoint and audit them against ``held``'s truth:
    the audit's figures, ``images_per_second`` and three example captions. ``captions_out``: also write the captions
    there (``recaption caption``'s JSONL), so a later audit needs no captioner. ``decode``: other ``DecodeConfig``
    fields (e.g. ``{"views": 5}``)."""
    from recaption.captioners.clip_prefix import load_clip_prefix
    from recaption.eval.audit import audit

    cap = load_clip_prefix(ckpt, device=device)
    cap.decode = type(cap.decode)(batch_size=batch_size, **(decode or {}))
    t = time.time()
    caps = cap.caption(images, mode)
    secs = time.time() - t
    by_key = {r.key: c for r, c in zip(held, caps, strict=True)}
    if captions_out:  # the lines `recaption caption` writes, provenance included
        prov = cap.provenance(mode).to_dict()
        with open(captions_out, "w") as f:
            for key, c in by_key.items():
                f.write(json.dumps({"key": key, "caption": c, "mode": mode, "provenance": prov}) + "\n")
    report = audit(held, by_key, mode=mode)
    per = report.pop("per_caption")
    report["images_per_second"] = round(len(images) / secs, 2)
    report["examples"] = [p["caption"] for p in per[:3]]
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-n", type=int, default=20000)
    ap.add_argument("--heldout-n", type=int, default=1000)
    ap.add_argument("--clip-steps", type=int, default=1500)
    ap.add_argument("--alt-steps", type=int, default=0, help="0 = the stage default")
    ap.add_argument("--short-steps", type=int, default=0)
    ap.add_argument("--desc-steps", type=int, default=0)
    ap.add_argument("--finetune-size", default="0.05")
    ap.add_argument("--desc-init", choices=("short", "alt"), default="short",
                    help="stage 3 starts from the short (default) or the alt checkpoint")
    ap.add_argument("--batch-size", type=int, default=64, help="captioning batch size")
    ap.add_argument("--out", default="bench_out/captioner")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--finetune-vision", action="store_true",
                    help="stage 1 also trains the CLIP vision tower (later stages inherit it)")
    ap.add_argument("--clip-from", default=None,
                    help="reuse this world CLIP checkpoint (trained on the same 20k alt-text) instead of training one")
    ap.add_argument("--clip-minutes", type=float, default=0.0, help="time box of the CLIP run (0: none)")
    ap.add_argument("--stage-minutes", default="0,0,0",
                    help="time boxes of the alt, short and descriptive stages in minutes (0: none)")
    ap.add_argument("--clip-batch", type=int, default=128)
    ap.add_argument("--clip-arch", choices=("vit", "resnet"), default="vit", help="the world CLIP's image tower")
    ap.add_argument("--clip-hard-negatives", default="", help="'world' or a word-groups JSON: NegCLIP negatives")
    ap.add_argument("--prefix-pool", type=int, default=1,
                    help="average-pool the image token grid by this factor (2: 8x8 -> 4x4, a shorter LM sequence)")
    ap.add_argument("--prefix-grid", type=int, default=0,
                    help="pool the image token map to a G x G grid instead (3: the world's 3x3 cells; 0: off)")
    ap.add_argument("--desc-extra-layer", type=int, action="append", default=[],
                    help="descriptive stage: add this tower hidden state to the prefix (a multi-level prefix; "
                         "repeatable; 1 = the ResNet tower's first stage)")
    ap.add_argument("--desc-option", action="append", default=[], metavar="NAME=VALUE",
                    help="any other CaptionerTrainConfig field of the descriptive stage (a JSON value), e.g. "
                         "batch_size=4 or dropout=0")
    ap.add_argument("--short-option", action="append", default=[], metavar="NAME=VALUE",
                    help="the same for the short stage, e.g. shift=2")
    ap.add_argument("--vision-lr-scale", type=float, default=0.5,
                    help="the tuned vision tower's LR relative to the LM's (with --finetune-vision)")
    ap.add_argument("--recon-weight", default="0,0,0",
                    help="per stage (alt,short,descriptive): weight of the self-supervised reconstruction loss "
                         "on the tuned tower (with --finetune-vision; 0: off)")
    ap.add_argument("--bow-weight", default="0,0,0",
                    help="per stage (alt,short,descriptive): weight of the bag-of-words loss on the prefix (0: off)")
    ap.add_argument("--stage-lr", default="0,0,0", help="peak LR of alt,short,descriptive (0: the stage default)")
    ap.add_argument("--tokenizer-finetune", action="store_true",
                    help="train the stage-1 tokenizer on the alt-text and the short/descriptive fine-tune captions")
    ap.add_argument("--lm-width", type=int, default=256, help="the from-scratch GPT-2's width")
    ap.add_argument("--lm-layers", type=int, default=4)
    ap.add_argument("--lm-heads", type=int, default=4)
    ap.add_argument("--alt-batch", type=int, default=0, help="stage-1 training batch (0: the stage default)")
    ap.add_argument("--json", default=None, help="write all figures here (default OUT/bench.json)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from recaption.captioners.clip_prefix import ClipPrefixConfig
    from recaption.captioners.train_prefix import CaptionerTrainConfig, train_captioner
    from recaption.clip.train import ClipTrainConfig, train_clip
    from recaption.eval.audit import audit_table
    from recaption.world.dataset import generate_records

    os.makedirs(args.out, exist_ok=True)
    boxes = [float(m) for m in args.stage_minutes.split(",")]
    stage_options = {"short": parse_options(args.short_option), "descriptive": parse_options(args.desc_option)}
    recon = [float(w) for w in args.recon_weight.split(",")]
    bows = [float(w) for w in args.bow_weight.split(",")]
    lrs = [float(x) for x in args.stage_lr.split(",")]
    if len(boxes) != 3 or len(recon) != 3 or len(lrs) != 3 or len(bows) != 3:
        ap.error("--stage-minutes, --recon-weight, --bow-weight and --stage-lr want three numbers each "
                 f"(alt,short,descriptive), got {args.stage_minutes!r}, {args.recon_weight!r}, {args.bow_weight!r} "
                 f"and {args.stage_lr!r}")

    def dump() -> None:  # after every stage, so a run stopped part way keeps what it measured
        with open(args.json or f"{args.out}/bench.json", "w") as f:
            json.dump(res, f, indent=1, default=str)

    res: dict = {"args": vars(args), "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch "
                 f"{torch.__version__}, {torch.get_num_threads()} threads, device {args.device}"}
    t = time.time()
    train = list(generate_records(args.train_n, seed=0))
    held = list(generate_records(args.heldout_n, seed=1))
    res["data_seconds"] = round(time.time() - t, 1)

    t = time.time()
    if args.clip_from:  # a CLIP an earlier run trained on the same records' alt-text: copy it and its figures
        shutil.copytree(args.clip_from, f"{args.out}/clip", dirs_exist_ok=True)
        with open(f"{args.out}/clip/clip_train.json") as f:
            res["clip"] = json.load(f)["metrics"]
        res["clip"]["reused_from"] = args.clip_from
    else:
        res["clip"] = train_clip(train, f"{args.out}/clip", ClipTrainConfig(
            steps=args.clip_steps, batch_size=args.clip_batch, max_minutes=args.clip_minutes,
            vision_arch=args.clip_arch, hard_negatives=args.clip_hard_negatives), device=args.device)
    res["clip"]["wall_seconds"] = round(time.time() - t, 1)
    dump()
    model_cfg = ClipPrefixConfig(finetune_vision=args.finetune_vision, prefix_pool=args.prefix_pool,
                                 prefix_grid=args.prefix_grid,
                                 lm_width=args.lm_width, lm_layers=args.lm_layers, lm_heads=args.lm_heads)

    from recaption.captioners.train_prefix import finetune_texts

    tok_extra = finetune_texts(train, ("short", "descriptive"), args.finetune_size) if args.tokenizer_finetune else []
    stages = [("alt", None, args.alt_steps), ("short", "alt", args.short_steps),
              ("descriptive", args.desc_init, args.desc_steps)]
    for (stage, init, steps), box, w, lr, bw in zip(stages, boxes, recon, lrs, bows, strict=True):
        t = time.time()
        m = train_captioner(train, f"{args.out}/{stage}",
                            CaptionerTrainConfig(stage=stage, steps=steps, finetune_size=args.finetune_size,
                                                 max_minutes=box, vision_lr_scale=args.vision_lr_scale,
                                                 recon_weight=w, lr=lr, bow_weight=bw,
                                                 **{"batch_size": args.alt_batch if stage == "alt" else 0,
                                                    **stage_options.get(stage, {})}),
                            init=f"{args.out}/{init}" if init else None, clip=f"{args.out}/clip" if not init else None,
                            model_cfg=None if init else model_cfg, device=args.device, resume=False,
                            tokenizer_texts=None if init else tok_extra,
                            add_layers=args.desc_extra_layer if stage == "descriptive" else ())
        m["wall_seconds"] = round(time.time() - t, 1)
        res[f"train_{stage}"] = m
        dump()

    images = [r.pil() for r in held]
    from rich.console import Console

    console = Console()
    for stage, mode in (("alt", "short"), ("alt", "descriptive"), ("short", "short"),
                        ("descriptive", "descriptive")):
        report = caption_and_audit(f"{args.out}/{stage}", held, images, mode, args.batch_size, args.device,
                                   captions_out=f"{args.out}/{stage}/heldout_{mode}.jsonl")
        res[f"audit_{stage}_{mode}"] = report
        console.print(audit_table(report, title=f"stage {stage}, mode {mode}: {report['images_per_second']} img/s"))
        for c in report["examples"]:
            console.print(f"  [dim]{c}[/dim]")
        dump()

    summary = {
        "clip_i2t_top1": res["clip"]["i2t_top1"], "clip_i2t_top5": res["clip"]["i2t_top5"],
        "clip_train_s": res["clip"]["train_seconds"],
        **{f"{s}_train_s": res[f"train_{s}"]["wall_seconds"] for s, _, _ in stages},
        "dsc_attribute_recall": res["audit_descriptive_descriptive"]["attribute_recall"],
        "dsc_hallucination_rate": res["audit_descriptive_descriptive"]["hallucination_rate"],
        "dsc_count_accuracy": res["audit_descriptive_descriptive"]["count_accuracy"],
        "dsc_relation_accuracy": res["audit_descriptive_descriptive"]["relation_accuracy"],
        "dsc_fill_accuracy_given_object": res["audit_descriptive_descriptive"].get("fill_accuracy_given_object"),
        "ssc_names_main_subjects": res["audit_short_short"]["names_main_subjects"],
        "ssc_words_per_caption": res["audit_short_short"]["words_per_caption"],
        "ssc_words_max": res["audit_short_short"]["words_max"],
        "alt_attribute_recall": res["audit_alt_descriptive"]["attribute_recall"],
        "alt_names_main_subjects": res["audit_alt_short"]["names_main_subjects"],
        "throughput_descriptive_img_s": res["audit_descriptive_descriptive"]["images_per_second"],
        "throughput_short_img_s": res["audit_short_short"]["images_per_second"],
    }
    res["summary"] = summary
    print(json.dumps(summary, indent=1))
    dump()


if __name__ == "__main__":
    main()
