"""The world upsampler's conversation semantics, measured: train it on (short, descriptive) pairs and follow-up
edit triples from world records, then ask it held-out follow-ups through :class:`Conversation` and read its
new descriptions back into scenes.

    python bench/bench_upsample_edits.py [--n 3000 --steps 1800 --batch-size 8 --lr 3e-3 --eval-n 100] [--out FILE.json]

Figures: share of held-out follow-ups whose new description carries the edit (read back with
``recaption.world.edits.parse_description``), share whose whole described scene equals the edited truth,
per edit kind; colour/shape retention and word counts on held-out short captions (the plain path); word
counts on the 200 DrawBench prompts (greedy, no retries, as bench_eval.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path


def _words(rows: list) -> dict:
    w = [r.words for r in rows]
    bad = sum(1 for r in rows if r.error or not 15 <= r.words <= 80)
    return {"min": min(w), "max": max(w), "mean": round(sum(w) / len(w), 1), "outside_15_80_or_flagged": bad,
            "n": len(rows)}


def _retention(short: str, out: str) -> bool:
    """Every colour and shape word of the short caption appears in the upsampled text (as bench_eval.py)."""
    from recaption.world import COLORS, SHAPES

    toks = set(short.lower().replace(".", " ").replace(",", " ").split())
    need = [w for w in toks if w in COLORS or w in SHAPES or w.rstrip("s") in SHAPES]
    return all(w.rstrip("s") in out.lower() for w in need)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="training world records")
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--edit-share", type=float, default=0.5)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--arch", default="gpt2", help="gpt2 (learned positions) or llama (rotary positions)")
    ap.add_argument("--eval-n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default=None, help="evaluate this trained world upsampler instead of training")
    ap.add_argument("--out", default=None, help="JSON with every figure and the outputs")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from recaption.eval.drawbench import load_prompts
    from recaption.upsample import Conversation, Upsampler, load_backend
    from recaption.upsample.world_lm import WorldLMConfig, load_training_text, train_world_lm
    from recaption.world import record_scene, truth_caption
    from recaption.world.dataset import WorldConfig, generate_records, write_dataset
    from recaption.world.edits import edit_named, edit_reflected, edit_triples, parse_description

    data_s = train_s = 0.0
    if args.model:
        path = Path(args.model)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="bench_upsample_edits_"))
        t = time.perf_counter()
        write_dataset(str(tmp / "world"), args.n, WorldConfig(seed=0, size=24), format="parquet", workers=1,
                      progress=False)
        pairs, edits = load_training_text(tmp / "world", seed=0)
        data_s = time.perf_counter() - t
        cfg = WorldLMConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, edit_share=args.edit_share,
                            arch=args.arch, n_layer=args.n_layer, n_embd=args.n_embd)
        t = time.perf_counter()
        path = train_world_lm(pairs, tmp / "world_lm", cfg, progress=False, edits=edits)
        train_s = time.perf_counter() - t
    meta = json.loads((path / "upsampler.json").read_text())

    up = Upsampler(load_backend(f"world:{path}"), short_retries=0)
    held_recs = list(generate_records(4 * args.eval_n, seed=99, size=24))
    triples = [x for x in edit_triples([record_scene(r) for r in held_recs], seed=7)
               if len(x.before.split()) <= 80 and len(x.after.split()) <= 80][:args.eval_n]
    t = time.perf_counter()
    rows, per_kind = [], Counter()
    for x in triples:
        conv = Conversation(up)
        conv.history = [("(earlier request)", x.before)]  # the previous turn's description
        r = conv.ask(x.instruction)
        strict = parse_description(r.upsampled)
        rows.append({"kind": x.edit.kind, "instruction": x.instruction, "before": x.before, "after_true": x.after,
                     "output": r.upsampled, "words": r.words, "error": r.error,
                     "reflected": edit_reflected(x, r.upsampled), "named": edit_named(x, r.upsampled),
                     "exact": bool(strict and strict.same_as(x.target)),
                     "unchanged": bool(strict and strict.same_as(x.source)), "parsed": strict is not None})
        per_kind[x.edit.kind] += 1
    edit_s = time.perf_counter() - t
    shorts = [truth_caption(r, "short") for r in held_recs[:args.eval_n]]
    plain = [up.upsample(s) for s in shorts]
    db = [up.upsample(p.prompt) for p in load_prompts()]
    conv = Conversation(up)
    example = [conv.ask("Two blue squares and a red circle.").upsampled, conv.ask("make the circle yellow").upsampled,
               conv.new("A green hexagon.").upsampled]

    n = len(rows)
    # chance: a fluent, true description of ANOTHER held-out edit scores this often
    chance = sum(edit_reflected(x, triples[(i + 1) % n].after) for i, x in enumerate(triples))
    chance_named = sum(edit_named(x, triples[(i + 1) % n].after) for i, x in enumerate(triples))
    kinds = {k: {"n": c, "reflected": sum(r["reflected"] for r in rows if r["kind"] == k),
                 "named": sum(r["named"] for r in rows if r["kind"] == k),
                 "exact": sum(r["exact"] for r in rows if r["kind"] == k)} for k, c in sorted(per_kind.items())}
    res = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.machine(),
        "threads": args.threads, "records": args.n, "pairs": meta["pairs"], "edits": meta["edits"],
        "longest_tokens": meta["longest_tokens"], "config": meta["config"], "data_s": round(data_s, 1),
        "train_s": round(train_s, 1), "final_loss": meta["final_loss"], "final_edit_loss": meta["final_edit_loss"],
        "edit_eval": {"n": n, "reflected": sum(r["reflected"] for r in rows), "chance_reflected": chance,
                      "named": sum(r["named"] for r in rows), "chance_named": chance_named,
                      "exact": sum(r["exact"] for r in rows),
                      "unchanged": sum(r["unchanged"] for r in rows),
                      "parsed": sum(r["parsed"] for r in rows),
                      "words_15_80": sum(15 <= r["words"] <= 80 and not r["error"] for r in rows),
                      "per_kind": kinds, "s_per_followup": round(edit_s / max(n, 1), 3)},
        "plain_eval": {"retention": sum(_retention(s, r.upsampled) for s, r in zip(shorts, plain, strict=True)),
                       "words": _words(plain)},
        "drawbench_words": _words(db),
        "example_conversation": example,
        "edit_rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    summary = {k: v for k, v in res.items() if k != "edit_rows"}
    print(json.dumps(summary, indent=2))
    for r in rows[:4]:
        print(f"\n[{r['kind']}] {r['instruction']}\n  before: {r['before']}\n  output: {r['output']}\n"
              f"  reflected={r['reflected']} exact={r['exact']}")


if __name__ == "__main__":
    main()
