"""Reader and writer throughput per format (records/s) on synthetic 64 px records.

    python bench/bench_io.py [--n 5000] [--size 64] [--out FILE.md]  (then copy the figures into bench/RESULTS.md)

Writes each format once from the same records (timed), then reads each back three ways: records only
(bytes, captions, metadata), records + PIL decode to RGB, and `recaption.io.info` (a full pass).
Best of --repeat runs; prints a markdown table and, with --out, writes it to that file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import tempfile
import time

from recaption import io as rio
from recaption.io.synthetic import synthetic_records


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    recs = list(synthetic_records(args.n, seed=0, size=args.size, jpeg_every=0))
    mb = sum(len(r.image) for r in recs) / 1e6
    tmp = tempfile.mkdtemp(prefix="bench_io_")
    rows = []
    try:
        for fmt in rio.FORMATS:
            out = os.path.join(tmp, fmt)

            def write(out=out, fmt=fmt):
                shutil.rmtree(out, ignore_errors=True)
                with rio.open_writer(out, fmt, shard_size=args.shard_size) as w:
                    for r in recs:
                        w.write(r)

            tw = _best(write, args.repeat)
            tr = _best(lambda out=out: sum(1 for _ in rio.read_records(out)), args.repeat)
            td = _best(lambda out=out: sum(r.pil().size[0] > 0 for r in rio.read_records(out)), args.repeat)
            rows.append((fmt, args.n / tw, args.n / tr, args.n / td))
            print(f"{fmt:8s} write {args.n / tw:8.0f} rec/s  read {args.n / tr:8.0f} rec/s  "
                  f"read+decode {args.n / td:8.0f} rec/s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## io: reader and writer throughput per format",
        "",
        f"{args.n:,} synthetic records, {args.size} px random-noise RGB PNGs ({mb:.1f} MB of images), 4 captions "
        f"with provenance and nested metadata each, shards of {args.shard_size}; local disk (tmpfs/overlay), "
        f"best of {args.repeat}. Machine: {os.cpu_count()}-core CPU shared with other engineers' jobs "
        f"(python {platform.python_version()}), {today}. `python bench/bench_io.py`.",
        "",
        "| format | write (rec/s) | read (rec/s) | read + PIL decode to RGB (rec/s) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {f} | {w:,.0f} | {r:,.0f} | {d:,.0f} |" for f, w, r, d in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
