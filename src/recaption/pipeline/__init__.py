"""The batch recaption job: read → decode → caption → write, resumable and fault-tolerant.

    from recaption.pipeline import RunConfig, run
    summary = run(RunConfig(input="shards/{00000..00099}.tar", output="out", captioner="ckpt/captioner",
                            modes=("short", "descriptive")))

Every original field is kept; the new captions and their provenance are added. Output shards are written
atomically with a ``_stats.json`` marker last, and a rerun of the same command skips finished shards, so
a job killed at any moment finishes with every input record in the output exactly once. Odd images are
converted (see :mod:`recaption.pipeline.decode`); undecodable ones become records with an ``error``; a
captioner that fails on a batch is retried image by image. Engines: ``local`` (threads on this machine;
``workers > 1``: that many processes, each with its own captioner, taking whole shards) and ``ray`` (Ray
Data over shards, captioners in an actor pool).

Output: shards named after the input shards (see :mod:`recaption.pipeline.core`), each with its
``NAME_stats.json`` (counts, captions per mode, error kinds, time); an image-folder output is written flat
(keys are unique across the input's subfolders); ``OUTPUT/.recaption/`` holds ``run.json`` (the config)
and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from recaption.io import _fs
from recaption.pipeline.core import (
    RUN_DIR,
    Plan,
    RunConfig,
    Summary,
    check_run_config,
    clean_temporaries,
    estimate_total,
    make_plan,
)
from recaption.pipeline.decode import DecodeError, decode_image
from recaption.records import RecordError

log = logging.getLogger(__name__)


def _run_local(cfg: RunConfig, captioner: Any, plan: Plan, total: int | None) -> Summary:
    from recaption.pipeline.local import run_local, run_local_processes

    if cfg.workers > 1:
        return run_local_processes(cfg, captioner, plan, total)
    return run_local(cfg, _instance(captioner), plan, total)


def _run_ray(cfg: RunConfig, captioner: Any, plan: Plan, total: int | None) -> Summary:
    from recaption.pipeline.ray_engine import run_ray

    return run_ray(cfg, captioner, plan, total)


ENGINES: dict[str, Callable[[RunConfig, Any, Plan, int | None], Summary]] = {
    "local": _run_local, "ray": _run_ray}

__all__ = ["ENGINES", "DecodeError", "RunConfig", "Summary", "decode_image", "load_captioner_for", "run"]


def load_captioner_for(cfg: RunConfig) -> Any:
    """The captioner named by ``cfg.captioner`` (``recaption.captioners.load_captioner``), seeded."""
    if not cfg.captioner:
        raise RecordError("no captioner given (--captioner DIR_OR_NAME)")
    import torch

    from recaption.captioners import load_captioner

    torch.manual_seed(cfg.seed)
    cap = load_captioner(cfg.captioner, device=cfg.device, dtype=cfg.dtype)
    if cfg.views == 1:
        return cap  # nothing to set: any captioner
    from recaption.captioners.clip_prefix import set_decode

    try:
        return set_decode(cap, views=cfg.views, combine=cfg.combine, view_shift=cfg.view_shift)
    except ValueError as e:
        raise RecordError(f"--views/--combine: {e}") from e


def _instance(captioner: Any) -> Any:
    """A captioner object from an object or a zero-argument factory (the ray engine ships factories)."""
    return captioner if hasattr(captioner, "caption") else captioner()


def run(cfg: RunConfig, captioner: Any = None) -> Summary:
    """Run the job ``cfg`` describes; ``captioner`` (an object or zero-argument factory) overrides
    ``cfg.captioner``. Returns the summary, also saved to ``OUTPUT/.recaption/summary.json``."""
    from PIL import Image

    if cfg.engine not in ENGINES:
        raise RecordError(f"unknown engine {cfg.engine!r}; expected one of {', '.join(ENGINES)}")
    if _fs.url_to_fs(cfg.input)[1].rstrip("/") == _fs.url_to_fs(cfg.output)[1].rstrip("/"):
        raise RecordError(f"input and output are the same folder: {cfg.input}")
    if Image.MAX_IMAGE_PIXELS is not None and cfg.max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = cfg.max_pixels  # PIL refuses at 2x its own limit; ours is the one applied
    if cfg.max_images is not None and (cfg.workers > 1 or cfg.engine != "local"):
        # a capped run is a trial: "the first N records in input order" is one reader's notion, so it runs
        # in this process (several workers would each need the others' counts to know where to stop)
        log.warning("--max-images %d: running in one local process (engine %s, %d workers asked)",
                    cfg.max_images, cfg.engine, cfg.workers)
        cfg = dataclasses.replace(cfg, engine="local", workers=1)
    t0 = time.perf_counter()
    plan = make_plan(cfg)
    check_run_config(cfg, plan)
    n_tmp = clean_temporaries(cfg.output)
    if n_tmp:
        log.info("removed %d temporary files left by an interrupted run", n_tmp)
    total = estimate_total(plan)
    if total is not None and plan.done:
        total = max(0, total - sum(int(s.get("input_records", 0)) for s in plan.done.values()))
    if cfg.max_images is not None and total is not None:
        total = min(total, cfg.max_images)
    if captioner is None:
        # several workers (processes or ray actors) each load their own copy
        captioner = (functools.partial(load_captioner_for, cfg) if cfg.engine == "ray" or cfg.workers > 1
                     else load_captioner_for(cfg))
    log.info("recaption: %d input shards (%s -> %s), %d output parts already done, modes %s",
             len(plan.units), plan.input_format, plan.output_format, len(plan.done), ",".join(cfg.modes))
    summary = ENGINES[cfg.engine](cfg, captioner, plan, total)
    summary.seconds = time.perf_counter() - t0
    fs, d = _fs.url_to_fs(cfg.output)
    _fs.makedirs(fs, _fs.join(fs, d, RUN_DIR))
    with _fs.atomic_open(fs, _fs.join(fs, d, RUN_DIR, "summary.json"), "wb") as f:
        f.write(json.dumps(summary.to_dict(), indent=2).encode())
    log.info("recaption done: %s", summary.line())
    return summary
