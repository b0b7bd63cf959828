"""Benchmark of the shapes world: generation throughput, oracle exactness, judge accuracy.

    python bench/bench_world.py [--n 20000] [--scenes 1000] [--per-prompt 3] [--seed 20231019]

1. ``recaption world make --n N`` as a user runs it (a fresh process, PNG into WebDataset shards, 2 workers):
   wall time and scenes per second (rendered, encoded and written).
2. Oracle parser: exact-scene rate on ``--scenes`` fresh scenes at 64 px from a seed the tests never use.
3. Oracle judge on the test split: for every prompt, ``--per-prompt`` renders of scenes sampled to satisfy it
   (should be judged correct) and as many of scenes breaking exactly one constraint (should be incorrect).
4. Parser robustness: the same figures on blurred, down-and-up-sampled and JPEG-compressed renders.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter


def bench_make(n: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "world")
        cmd = [sys.executable, "-c", "from recaption.cli import main; main()", "world", "make", "--n", str(n),
               "--seed", str(seed), "--out", out, "--format", "wds", "--workers", "2", "--no-progress"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    return {"n": n, "wall_s": round(wall, 2), "scenes_per_s": round(n / wall, 1),
            "inner_s": summary["seconds"], "bytes": size}


def bench_oracle(scenes: int, seed: int) -> dict:
    from recaption.world.oracle import parse
    from recaption.world.render import render
    from recaption.world.sampler import sample_scene, scene_rng

    exact, misses = 0, []
    t0 = time.perf_counter()
    for i in range(scenes):
        s = sample_scene(scene_rng(seed, i))
        got = parse(render(s, 64))
        if got.same_as(s):
            exact += 1
        else:
            misses.append({"index": i, "truth": s.to_dict(), "parsed": got.to_dict()})
    dt = time.perf_counter() - t0
    return {"scenes": scenes, "exact": exact, "exact_rate": exact / scenes, "ms_per_scene": round(1000 * dt / scenes, 2),
            "misses": misses[:5]}


def _degradations() -> dict:
    import io

    from PIL import Image, ImageFilter

    def jpeg(im, q):
        b = io.BytesIO()
        im.save(b, "JPEG", quality=q)
        return Image.open(b).convert("RGB")

    return {"clean": lambda im: im,
            "blur 0.5 px": lambda im: im.filter(ImageFilter.GaussianBlur(0.5)),
            "blur 0.8 px": lambda im: im.filter(ImageFilter.GaussianBlur(0.8)),
            "32 px and back": lambda im: im.resize((32, 32), Image.BILINEAR).resize((64, 64), Image.BILINEAR),
            "JPEG q95": lambda im: jpeg(im, 95), "JPEG q75": lambda im: jpeg(im, 75)}


def bench_robustness(scenes: int, seed: int) -> dict:
    """How the parser degrades on softer images (a model's output is never a clean render)."""
    from recaption.world.oracle import parse
    from recaption.world.render import render
    from recaption.world.sampler import sample_scene, scene_rng

    truth = [sample_scene(scene_rng(seed + 1, i)) for i in range(scenes)]
    out = {}
    for name, f in _degradations().items():
        exact = n_obj = 0
        hits: Counter[str] = Counter()
        signs = text_ok = 0
        for s in truth:
            p = parse(f(render(s)))
            exact += p.same_as(s)
            got = {o.cell: o for o in p.objects}
            for o in s.objects:
                n_obj += 1
                q = got.get(o.cell)
                hits["found"] += q is not None
                for k in ("shape", "color", "size", "fill"):
                    hits[k] += q is not None and getattr(q, k) == getattr(o, k)
            hits["count"] += len(p.objects) == len(s.objects)
            if s.sign:
                signs += 1
                text_ok += p.text == s.text
        out[name] = {"exact": round(exact / scenes, 3), **{k: round(hits[k] / n_obj, 3) for k in
                     ("found", "shape", "color", "size", "fill")},
                     "object_count": round(hits["count"] / scenes, 3), "text": round(text_ok / max(1, signs), 3)}
    return out


def bench_judge(per_prompt: int, seed: int) -> dict:
    from recaption.world.judge import judge
    from recaption.world.prompts import prompt_suite, scene_breaking, scene_for
    from recaption.world.render import render

    rng = random.Random(seed)
    good = bad = n = 0
    wrong: Counter[str] = Counter()
    for p in prompt_suite("test"):
        for _ in range(per_prompt):
            ok = judge(render(scene_for(p, rng)), p).correct
            broken, _ = scene_breaking(p, rng)
            caught = not judge(render(broken), p).correct
            good += ok
            bad += caught
            n += 1
            if not (ok and caught):
                wrong[p.category] += 1
    return {"pairs": n, "correct_on_satisfying": good / n, "incorrect_on_broken": bad / n,
            "misjudged_by_category": dict(wrong)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--scenes", type=int, default=1000)
    ap.add_argument("--per-prompt", type=int, default=3)
    ap.add_argument("--robust-scenes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=20231019, help="never used by the tests")
    args = ap.parse_args()
    load = os.getloadavg()
    res = {"make": bench_make(args.n, args.seed), "oracle": bench_oracle(args.scenes, args.seed),
           "judge": bench_judge(args.per_prompt, args.seed),
           "robustness": bench_robustness(args.robust_scenes, args.seed), "loadavg_before": load}
    m, o, j = res["make"], res["oracle"], res["judge"]
    print(f"world make --n {m['n']} (wds, 2 workers, fresh process): {m['wall_s']} s wall, "
          f"{m['scenes_per_s']} scenes/s, {m['bytes'] / 1e6:.1f} MB")
    print(f"oracle parser, {o['scenes']} fresh scenes at 64 px (seed {args.seed}): exact {o['exact']}/{o['scenes']}"
          f" = {o['exact_rate']:.2%}, {o['ms_per_scene']} ms/scene")
    print(f"oracle judge, test split x {args.per_prompt}: correct on satisfying {j['correct_on_satisfying']:.2%}, "
          f"incorrect on one-constraint-broken {j['incorrect_on_broken']:.2%} ({j['pairs']} pairs)")
    print(f"machine load average before the run: {load[0]:.1f} (2 cores, shared)")
    print("parser on degraded renders (per-object rates; exact = whole scene):")
    for name, r in res["robustness"].items():
        print(f"  {name:15s} " + "  ".join(f"{k} {v:.3f}" for k, v in r.items()))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
