"""World datasets: records with a rendered image, its alt-text, and the truth kept apart under meta.

A record's ``captions`` hold ``{"alt": ...}`` only; the truth sits in ``meta["world"] = {"scene": {...},
"truth": {"short": ..., "descriptive": ...}, "seed": S, "index": i, "size": px}`` so that training code
reading ``captions`` can never mistake it for a synthetic caption. Record ``i`` of seed ``S`` is the same
whichever worker or shard produces it (its generator is seeded by ``(S, i)``).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from recaption.records import Record
from recaption.world.captions import AltTextConfig, alt_text, descriptive_caption, short_caption
from recaption.world.render import png_bytes, render_array
from recaption.world.sampler import SamplerConfig, sample_scene, scene_rng
from recaption.world.scene import Scene

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines a world dataset besides its size: seed, image size, sampler and alt-text rates."""

    seed: int = 0
    size: int = 64
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    alt: AltTextConfig = field(default_factory=AltTextConfig)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sampler"]["exclude_combos"] = sorted(list(c) for c in self.sampler.exclude_combos)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldConfig:
        sampler = dict(d.get("sampler", {}))
        if "exclude_combos" in sampler:
            sampler["exclude_combos"] = frozenset(tuple(c) for c in sampler["exclude_combos"])
        return cls(seed=int(d.get("seed", 0)), size=int(d.get("size", 64)), sampler=SamplerConfig(**sampler),
                   alt=AltTextConfig(**d.get("alt", {})))


CONFIG_NAME = ".recaption/world.json"
"""Where a written dataset keeps its WorldConfig (hidden from every reader), so a resumed job can check it."""


def _check_config(out: str, cfg: WorldConfig, resume: bool, shard_size: int) -> None:
    from recaption.io._fs import url_to_fs
    from recaption.world.jobs import WorldJobError

    fs, root = url_to_fs(out)
    path = root.rstrip("/") + "/" + CONFIG_NAME
    want = {**cfg.to_dict(), "shard_size": shard_size}
    if resume and fs.exists(path):
        have = json.loads(fs.cat_file(path))
        if have != want:
            def flat(d: dict, pre: str = "") -> dict:
                return {k2: v2 for k, v in d.items()
                        for k2, v2 in (flat(v, pre + k + ".") if isinstance(v, dict) else {pre + k: v}).items()}
            fh, fw = flat(have), flat(want)
            diff = ", ".join(f"{k}: {fh.get(k)!r} there, {fw.get(k)!r} asked" for k in sorted(set(fh) | set(fw))
                             if fh.get(k) != fw.get(k))
            raise WorldJobError(f"{out} holds a world dataset made with another config ({diff}); use another "
                                "--out or delete it")
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(json.dumps(want, indent=2))


def make_record(index: int, cfg: WorldConfig = WorldConfig()) -> Record:
    """Record ``index`` of the world dataset ``cfg`` (key = zero-padded index)."""
    rng = scene_rng(cfg.seed, index)
    scene = sample_scene(rng, cfg.sampler)
    img = render_array(scene, cfg.size)
    truth = {"short": short_caption(scene, rng), "descriptive": descriptive_caption(scene, rng)}
    meta = {"world": {"scene": scene.to_dict(), "truth": truth, "seed": cfg.seed, "index": index,
                      "size": cfg.size}}
    return Record(key=f"{index:08d}", image=png_bytes(img), image_ext="png",
                  captions={"alt": alt_text(scene, rng, cfg.alt)}, meta=meta)


def generate_records(n: int, seed: int = 0, size: int = 64, *, start: int = 0,
                     sampler: SamplerConfig | None = None, alt: AltTextConfig | None = None) -> Iterator[Record]:
    """Stream records ``start`` .. ``start + n - 1`` of the world dataset with this seed."""
    cfg = WorldConfig(seed=seed, size=size, sampler=sampler or SamplerConfig(), alt=alt or AltTextConfig())
    for i in range(start, start + n):
        yield make_record(i, cfg)


def scene_of(record: Record) -> Scene:
    """The true scene of a world record."""
    return Scene.from_dict(record.meta["world"]["scene"])


def _write_shard(job: tuple[str, str, str, int, int, WorldConfig]) -> int:
    from recaption.io import open_shard_writer

    out, name, fmt, lo, hi, cfg = job
    with open_shard_writer(out, name, fmt) as w:
        for i in range(lo, hi):
            w.write(make_record(i, cfg))
    return hi - lo


def write_dataset(out: str, n: int, cfg: WorldConfig = WorldConfig(), *, format: str = "wds",
                  shard_size: int = 1000, workers: int | None = None, progress: bool = True,
                  resume: bool = True) -> dict[str, Any]:
    """Write ``n`` world records to ``out`` in ``format``, one shard of ``shard_size`` records per task.

    Shards are written by ``workers`` processes (default: the CPU count, at most 8), each through
    :func:`recaption.io.open_shard_writer` (atomic, stats marker last); with ``resume`` finished shards are
    skipped. Returns a summary with the wall time and the scenes per second.
    """
    from tqdm.auto import tqdm

    from recaption.io import check_format, read_shard_stats

    check_format(format)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    _check_config(out, cfg, resume, shard_size)
    jobs, skipped = [], 0
    for k, lo in enumerate(range(0, n, shard_size)):
        name = f"{k:05d}"
        hi = min(n, lo + shard_size)
        stats = read_shard_stats(out, name, format) if resume else None
        if stats is not None and stats.get("count") == hi - lo:  # finished, and with the same records
            skipped += hi - lo
            continue
        jobs.append((out, name, format, lo, hi, cfg))
    workers = max(1, min(workers or min(os.cpu_count() or 1, 8), len(jobs) or 1))
    if str(out).startswith("memory://"):
        workers = 1  # an in-memory filesystem lives in one process
    t0 = time.perf_counter()
    bar = tqdm(total=n, initial=skipped, unit="scene", desc=f"world -> {format}", disable=not progress)
    written = 0
    if workers == 1:
        for job in jobs:
            written += _write_shard(job)
            bar.update(job[4] - job[3])
    else:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers) as pool:
            for done in pool.imap_unordered(_write_shard, jobs):
                written += done
                bar.update(done)
    bar.close()
    wall = time.perf_counter() - t0
    log.info("wrote %d world records (%d skipped) to %s in %.2f s", written, skipped, out, wall)
    return {"path": str(out), "format": format, "records": n, "written": written, "skipped": skipped,
            "shards": -(-n // shard_size), "seconds": round(wall, 3),
            "scenes_per_s": round(written / wall, 1) if wall > 0 else None, "seed": cfg.seed, "size": cfg.size}
