"""Recaption job throughput against the bare captioner, and kill -9 / resume at scale.

    python bench/bench_pipeline.py [--n 1024] [--batch-size 32] [--out FILE.md]  (then copy the figures into bench/RESULTS.md)
    python bench/bench_pipeline.py --kill-test 5000 --kills 10     # appends the resume check

Throughput: a clip-prefix captioner of the shapes world's default size (CLIP ViT 4x128 at 64 px, patch
tokens of layer -2, resampler mapper, GPT-2 4x256), random weights, greedy decoding of exactly
``--tokens`` tokens (random weights rarely emit EOS, so every caption costs the same), one mode.
"bare" = the model alone on already-decoded ``uint8`` pixel tensors (``clip_features`` +
``caption_features``, batch by batch); "pipeline" = ``recaption.pipeline.run`` over WebDataset shards of
world PNGs (read, decode in background threads, caption, write shards + stats), wall clock of the whole
call. Runs alternate (bare, pipeline, bare, pipeline, ...) so that other load on the machine hits both.

Kill test: the same job (through the same captioner checkpoint, in a subprocess) killed with SIGKILL at
``--kills`` random moments, restarted each time, then finished; the output must hold every input key
exactly once with captions identical to an uninterrupted run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

KILL_JOB = r"""
import sys, warnings
warnings.filterwarnings("ignore")
from recaption.captioners import load_captioner
from recaption.captioners.clip_prefix import DecodeConfig
from recaption.pipeline import RunConfig, run
import torch
torch.set_num_threads(int(sys.argv[5]))
cap = load_captioner(sys.argv[3])
cap.decode = DecodeConfig(max_new_tokens=int(sys.argv[4]), batch_size=64)
run(RunConfig(input=sys.argv[1], output=sys.argv[2], modes=("short",), batch_size=32, progress=False), cap)
print("FINISHED")
"""


def build_captioner(path: str, tokens: int, batch_size: int, device: str = "cpu"):
    """A random-weight world-size clip-prefix captioner, saved to ``path`` (so a subprocess can load it)."""
    import torch

    from recaption.captioners.clip_prefix import ClipPrefixConfig, DecodeConfig
    from recaption.captioners.train_prefix import build_captioner as build
    from recaption.clip.model import ClipEncoder
    from recaption.clip.tokenizer import train_tokenizer
    from recaption.clip.train import ClipTrainConfig, build_clip, image_processor

    torch.manual_seed(0)
    texts = [f"a {c} {s} on the {p}" for c in ("red", "blue", "green") for s in ("circle", "square")
             for p in ("left", "right")] * 20
    ccfg = ClipTrainConfig()
    tok = train_tokenizer(texts, vocab_size=512, lowercase=True)
    clip_dir = os.path.join(path, "clip-src")
    ClipEncoder(build_clip(ccfg, tok), tok, image_processor(ccfg), name=clip_dir).save(clip_dir)
    cap = build(texts, clip_dir, ClipPrefixConfig(vocab_size=512), device=device)
    cap.save(os.path.join(path, "captioner"))
    cap.decode = DecodeConfig(max_new_tokens=tokens, batch_size=batch_size)
    return cap, os.path.join(path, "captioner")


def load_for_bench(ckpt: str, tokens: int, batch_size: int, device: str = "cpu"):
    """The saved captioner with the bench's decoding (a factory the ray actors call)."""
    from recaption.captioners import load_captioner
    from recaption.captioners.clip_prefix import DecodeConfig

    cap = load_captioner(ckpt, device=device)
    cap.decode = DecodeConfig(max_new_tokens=tokens, batch_size=batch_size)
    return cap


def write_shards(path: str, n: int, shard_size: int) -> None:
    from recaption import io as rio

    try:
        from recaption.world.dataset import generate_records

        recs = generate_records(n, seed=123)
    except ImportError:  # the world is another engineer's; fall back to noise images
        from recaption.io.synthetic import synthetic_records

        recs = synthetic_records(n, seed=123, size=64, jpeg_every=0)
    with rio.open_writer(path, "wds", shard_size=shard_size) as w:
        for r in recs:
            w.write(r)


def throughput(args, tmp: str, cap, ckpt: str) -> dict:
    import torch

    from recaption import io as rio
    from recaption.captioners.clip_prefix import clip_features, clip_geometry
    from recaption.clip.data import to_pixels
    from recaption.pipeline import RunConfig, run

    data = os.path.join(tmp, "shards")
    write_shards(data, args.n, args.shard_size)
    size, _, _ = clip_geometry(cap.clip)
    import numpy as np

    pixels = torch.from_numpy(np.stack([to_pixels(r.pil(), size) for r in rio.read_records(data)]))
    bs = args.batch_size

    def bare() -> float:
        t = time.perf_counter()
        for i in range(0, len(pixels), bs):
            cap.caption_features(clip_features(cap.clip, pixels[i:i + bs], cap.cfg))
        return len(pixels) / (time.perf_counter() - t)

    def pipe(engine: str = "local") -> float:
        out = os.path.join(tmp, "out")
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        # the ray actors (and worker processes) load their own copy of the captioner
        c = cap if engine == "local" and args.workers == 1 else functools.partial(
            load_for_bench, ckpt, args.tokens, bs, args.device)
        s = run(RunConfig(input=data, output=out, modes=("short",), batch_size=bs, decode_workers=args.decode_workers,
                          progress=False, engine=engine, workers=args.workers if engine == "local" else 1), c)
        dt_ = time.perf_counter() - t
        assert s.records == args.n and s.captioned == {"short": args.n}, s.line()
        return args.n / dt_

    ray_init = None
    if args.ray:
        import ray

        t = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_init = time.perf_counter() - t
    bare()  # warm-up
    b, p, r = [], [], []
    for _ in range(args.repeat):
        b.append(bare())
        p.append(pipe())
        if args.ray:
            r.append(pipe("ray"))
        print(f"bare {b[-1]:.1f} img/s   pipeline {p[-1]:.1f} img/s" + (f"   ray {r[-1]:.1f} img/s" if r else ""),
              flush=True)
    return {"bare": b, "pipeline": p, "ray": r, "ray_init": ray_init,
            "ratio": statistics.median(p) / statistics.median(b),
            "ray_ratio": statistics.median(r) / statistics.median(p) if r else None}


def kill_test(args, tmp: str, ckpt: str) -> dict:
    from recaption import io as rio

    data = os.path.join(tmp, "kill-shards")
    write_shards(data, args.kill_test, args.shard_size)
    script = os.path.join(tmp, "job.py")
    with open(script, "w") as f:
        f.write(KILL_JOB)
    out, ref = os.path.join(tmp, "kill-out"), os.path.join(tmp, "kill-ref")
    cmd = [sys.executable, script, data, out, ckpt, str(args.tokens), str(args.threads)]
    t = time.perf_counter()
    subprocess.run([*cmd[:3], ref, *cmd[4:]], check=True, capture_output=True)
    full = time.perf_counter() - t
    print(f"uninterrupted run: {full:.1f} s", flush=True)
    rng = random.Random(args.seed)
    kills, restarts = [], 0
    while len(kills) < args.kills:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        restarts += 1
        wait = rng.uniform(3.0, max(4.0, full / 8))  # past start-up (torch import, model load), into the job
        time.sleep(wait)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.communicate()
            done = len([n for n in os.listdir(out) if n.endswith("_stats.json")]) if os.path.isdir(out) else 0
            kills.append(round(wait, 2))
            print(f"kill {len(kills)} after {wait:.1f} s ({done} shards finished)", flush=True)
        else:
            p.communicate()
            print("job finished before the kill; starting over with a fresh output", flush=True)
            shutil.rmtree(out)
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert "FINISHED" in p.stdout, p.stderr[-2000:]
    got = list(rio.read_records(out))
    keys = [r.key for r in got]
    want = {r.key: r.captions for r in rio.read_records(ref)}
    res = {"n": args.kill_test, "kills": kills, "runs": restarts + 1, "records": len(keys),
           "unique_keys": len(set(keys)), "identical_captions": {r.key: r.captions for r in got} == want,
           "uninterrupted_seconds": round(full, 1)}
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--decode-workers", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="worker processes of the local engine")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--kill-test", type=int, default=0, help="records in the kill -9 job (0: skip)")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--ray", action="store_true", help="also time the ray engine (needs recaption[ray])")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import warnings

    import torch

    warnings.filterwarnings("ignore", message=".*no_repeat_ngram_size.*")
    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="bench_pipeline_")
    lines = []
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = (f"{os.cpu_count()}-core CPU shared with other engineers' jobs (load average {os.getloadavg()[0]:.1f} "
               "at start)")
    if args.device.startswith("cuda"):
        machine = f"{torch.cuda.get_device_name()} with {os.cpu_count()} CPU cores (lent device machine, not shared)"
    try:
        cap, ckpt = build_captioner(tmp, args.tokens, args.batch_size, args.device)
        if not args.skip_throughput:
            r = throughput(args, tmp, cap, ckpt)
            lines += [
                "## pipeline: recaption job throughput vs the bare captioner",
                "",
                f"{args.n:,} shapes-world 64 px PNGs in WebDataset shards of {args.shard_size}; clip-prefix captioner "
                f"of the world's default size with random weights, greedy, {args.tokens} tokens per caption, one mode, "
                f"batch {args.batch_size}, torch threads {args.threads}, {args.decode_workers} decode threads, "
                f"{args.workers} worker process(es), "
                f"device {args.device}; {machine}; {today}. "
                "`python bench/bench_pipeline.py`.",
                "",
                "| run | bare model on decoded tensors (img/s) | `recaption.pipeline.run` over shards, local engine "
                "(img/s) | ray engine (img/s) |",
                "|---|---:|---:|---:|",
            ]
            ray_col = r["ray"] or ["-"] * len(r["bare"])
            lines += [f"| {i + 1} | {b:.1f} | {p:.1f} | {x if isinstance(x, str) else f'{x:.1f}'} |"
                      for i, (b, p, x) in enumerate(zip(r["bare"], r["pipeline"], ray_col, strict=True))]
            lines += ["", f"Pipeline (local engine) / bare model, medians: **{r['ratio']:.2f}**", ""]
            if r["ray"]:
                lines += [f"Ray engine / local engine, medians: **{r['ray_ratio']:.2f}** (one actor, local Ray "
                          f"instance already started; starting it took {r['ray_init']:.1f} s, not counted).", ""]
        if args.kill_test:
            k = kill_test(args, tmp, ckpt)
            lines += [
                "## pipeline: kill -9 and resume",
                "",
                f"A {k['n']:,}-image job (the captioner above, {args.tokens} tokens, batch 32, shards of "
                f"{args.shard_size}) killed with SIGKILL {len(k['kills'])} times at random moments "
                f"({', '.join(str(x) for x in k['kills'])} s after each start), restarted each time, then finished "
                f"({k['runs']} runs). Output: {k['records']:,} records, {k['unique_keys']:,} distinct keys, captions "
                f"identical to an uninterrupted run: {k['identical_captions']}. Uninterrupted run: "
                f"{k['uninterrupted_seconds']} s. {machine}; {today}. "
                f"`python bench/bench_pipeline.py --kill-test {k['n']} --kills {len(k['kills'])} --skip-throughput`.",
                "",
            ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        mode = "a" if args.skip_throughput and os.path.exists(args.out) else "w"
        with open(args.out, mode) as f:
            f.write(("\n" if mode == "a" else "") + text)


if __name__ == "__main__":
    main()
