"""Evaluation and upsampling figures: DrawBench from the published GPT-4V verdicts, the upsampler's word limits
on the 200 DrawBench prompts, the world upsampler (trained here), and, given trained world models, the world
CLIP score and the world evaluation.

    python bench/bench_eval.py [--world-n 3000 --world-steps 600] [--clip DIR] [--t2i DIR ...] [--out FILE.md]

Sections that need trained models (--clip, --t2i) are skipped without them, and say so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import random
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dalle3-eval"


def drawbench_section() -> str:
    from recaption.eval.drawbench import results_table, run_drawbench

    files = [SHARED / "drawbench_gpt4v" / f"{m}.json" for m in ("dalle3", "dalle2", "sdxl")]
    t = time.perf_counter()
    res = run_drawbench(files, n_boot=1000, seed=0)
    secs = time.perf_counter() - t
    bases = ", ".join(f"{n}: {r['index_base']}" for n, r in res.items())
    return ("## DrawBench, published GPT-4V verdicts (paper Table 1: 70.4 / 49.0 / 46.9)\n\n"
            "Share of the 800 images per model judged correct, per category, 95% bootstrap interval over prompts "
            f"(1000 resamples, seed 0); prompt index base per file ({bases}). Aggregation of all three: {secs:.2f} s.\n\n"
            + results_table(res))


def _word_stats(rows: list[dict]) -> str:
    words = [r["words"] for r in rows]
    bad = sum(1 for r in rows if r["error"] or not 15 <= r["words"] <= 80)
    return f"words {min(words)}-{max(words)} (mean {sum(words) / len(words):.1f}), outside 15-80 or flagged: {bad}"


def upsample_template_section(tmp: Path) -> str:
    from recaption.eval.drawbench import load_prompts
    from recaption.upsample import TemplateBackend, Upsampler, upsample_file

    p = tmp / "drawbench.txt"
    p.write_text("\n".join(x.prompt for x in load_prompts()) + "\n")
    t = time.perf_counter()
    s = upsample_file(Upsampler(TemplateBackend()), p, tmp / "up_template.jsonl", progress=False)
    secs = time.perf_counter() - t
    rows = [json.loads(x) for x in (tmp / "up_template.jsonl").read_text().splitlines()]
    return (f"- template stand-in on the 200 DrawBench prompts: {s['ok']}/{s['prompts']} ok, {s['cut']} cut at 80; "
            f"{_word_stats(rows)}; {secs:.2f} s\n")


def _retention(short: str, out: str) -> bool:
    """Every colour and shape word of the short caption appears in the upsampled text."""
    from recaption.world import COLORS, SHAPES

    toks = set(short.lower().replace(".", " ").replace(",", " ").split())
    need = [w for w in toks if w in COLORS or w in SHAPES or w.rstrip("s") in SHAPES]
    low = out.lower()
    return all(w.rstrip("s") in low for w in need)


def world_upsampler_section(tmp: Path, n: int, steps: int, n_eval: int = 100) -> str:
    from recaption.eval.drawbench import load_prompts
    from recaption.upsample import Upsampler, load_backend
    from recaption.upsample.world_lm import WorldLMConfig, train_world_lm
    from recaption.world import truth_caption
    from recaption.world.dataset import generate_records

    pairs = [(truth_caption(r, "short"), truth_caption(r, "descriptive")) for r in generate_records(n, seed=0)]
    cfg = WorldLMConfig(steps=steps)
    t = time.perf_counter()
    path = train_world_lm(pairs, tmp / "world_lm", cfg, progress=False)
    train_s = time.perf_counter() - t
    meta = json.loads((path / "upsampler.json").read_text())
    up = Upsampler(load_backend(f"world:{path}"))
    held = [truth_caption(r, "short") for r in generate_records(n_eval, seed=99)]
    t = time.perf_counter()
    rows = [up.upsample(s).to_dict() for s in held]
    gen_s = time.perf_counter() - t
    keep = sum(_retention(s, r["upsampled"]) for s, r in zip(held, rows, strict=True))
    up.short_retries = 0  # bound the time on prompts far outside the world
    db = [up.upsample(p.prompt).to_dict() for p in load_prompts()]
    example = rows[0]
    return (f"- world LM ({cfg.n_layer} layers, width {cfg.n_embd}, BPE {cfg.vocab_size}) trained on {len(pairs)} "
            f"(short, descriptive) truth pairs, {steps} steps, batch {cfg.batch_size}: {train_s:.0f} s, final loss "
            f"{meta['final_loss']:.3f}\n"
            f"- on {n_eval} held-out world short captions (seed 99): {_word_stats(rows)}; colour and shape words "
            f"kept in {keep}/{n_eval}; {gen_s / n_eval:.2f} s per prompt\n"
            f"  - e.g. `{example['prompt']}` -> `{example['upsampled']}`\n"
            f"- world LM on the 200 DrawBench prompts (far outside its world; no retries): {_word_stats(db)}\n")


def clip_section(clip: str, n: int) -> str:
    from recaption.clip import load_clip
    from recaption.eval.clipscore import ClipPairs, evaluate_clipscore
    from recaption.world import truth_caption
    from recaption.world.dataset import generate_records

    recs = list(generate_records(n, seed=7))
    pairs = ClipPairs([r.key for r in recs], [r.pil() for r in recs],
                      {"alt": [r.captions["alt"] for r in recs],
                       "truth:descriptive": [truth_caption(r, "descriptive") for r in recs],
                       "truth:short": [truth_caption(r, "short") for r in recs]})
    enc = load_clip(clip)
    t = time.perf_counter()
    res = evaluate_clipscore(enc, pairs, n_boot=1000)
    secs = time.perf_counter() - t
    lines = [f"- {f}: {r['score']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}], truncated {r['truncated']}/{r['n']}"
             for f, r in res["fields"].items()]
    return (f"## World CLIP score ({clip}, {n} world images, seed 7; {secs:.1f} s)\n\n" + "\n".join(lines) + "\n")


def world_eval_section(models: list[str], clip: str | None, out: Path, test_limit: int | None,
                       val_limit: int | None, guidances: list[float]) -> str:
    from recaption.eval.world_eval import model_generate_fn, run_world_eval, world_table

    fns = {Path(m).name: model_generate_fn(m) for m in models}
    t = time.perf_counter()
    res = run_world_eval([], out, clip=clip, generate_fns=fns, test_limit=test_limit, val_limit=val_limit,
                         guidances=guidances, seeds=[0])
    n_img = sum(r["n_val"] * len(guidances) + r["n_test"] for r in res.values())
    secs = time.perf_counter() - t
    return (f"## World evaluation ({', '.join(models)}; {secs:.0f} s for {n_img} generated and judged images; "
            f"report in {out})\n\n" + world_table(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world-n", type=int, default=3000)
    ap.add_argument("--world-steps", type=int, default=600)
    ap.add_argument("--world-eval-n", type=int, default=100)
    ap.add_argument("--clip", default=None, help="trained world CLIP folder")
    ap.add_argument("--clip-n", type=int, default=500)
    ap.add_argument("--t2i", nargs="*", default=[], help="trained world t2i model folders")
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--val-limit", type=int, default=None)
    ap.add_argument("--guidance", default="1,2,3,5")
    ap.add_argument("--skip-world-lm", action="store_true")
    ap.add_argument("--out", default=None, help="write the markdown here too")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    random.seed(0)
    parts = [f"# eval / upsample benchmarks\n\n{dt.date.today()}, {platform.machine()} 2-core CPU shared with other "
             "engineers' jobs (timings are loaded-machine figures)\n", drawbench_section()]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        up = "## Upsampler word limits (15-80)\n\n" + upsample_template_section(tmp)
        if not args.skip_world_lm:
            up += world_upsampler_section(tmp, args.world_n, args.world_steps, args.world_eval_n)
        parts.append(up)
        parts.append(clip_section(args.clip, args.clip_n) if args.clip else
                     "## World CLIP score\n\nnot run: no trained world CLIP given (--clip DIR)\n")
        parts.append(world_eval_section(args.t2i, args.clip, Path("runs/bench_eval/world_eval"), args.test_limit,
                                        args.val_limit, [float(g) for g in args.guidance.split(",")])
                     if args.t2i else "## World evaluation\n\nnot run: no trained world t2i model given (--t2i DIR)\n")
    text = "\n".join(parts)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
