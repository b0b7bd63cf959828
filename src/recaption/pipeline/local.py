"""The local engine: reader, decode workers, captioner and writer overlap on one machine.

    reader thread ──► decode thread pool (futures, ``batch_size × prefetch`` ahead)
                 └──► queue ──► captioner (the calling thread: batches, one call per mode)
                                  └──► queue ──► writer thread (atomic shards, stats markers, progress)

Records stay in input order; a batch may span two output parts, and a part's end marker travels behind
its last record, so the writer commits a part only once all of its records are written.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from recaption import io as rio
from recaption.pipeline.core import (
    Item,
    PartStats,
    Plan,
    RunConfig,
    Summary,
    caption_items,
    check_modes,
    decode_item,
    prepare,
)
from recaption.records import RecordError

log = logging.getLogger(__name__)

Event = tuple  # ("rec", Item) | ("end", part, truncated) | ("abort", part, shard, msg) | ("skip", part, stats)
#              | ("shard", records) after each input shard | ("done",)


def iter_events(plan: Plan, cfg: RunConfig) -> Iterator[Event]:
    """Walk the input in order: records of unfinished parts, part ends, finished parts skipped, failures.

    ``max_images`` counts input records in order, finished parts included, so a resumed run stops at the
    same record; a part cut short by it is marked ``truncated`` (and redone by a later, larger run).
    """
    budget = cfg.max_images
    seen: set[str] | None = set() if plan.input_format == "folder" else None
    for u in plan.units:
        if budget is not None and budget <= 0:
            return
        if u.part_size <= 0 and plan.is_done(u.sid):
            st = plan.done[u.sid]
            yield ("skip", u.sid, st)
            if budget is not None:
                budget -= int(st.get("input_records", st.get("count", 0)))
            continue
        cur, cur_done, truncated, i = None, False, False, 0
        try:
            for rec in rio.read_shard(u.shard, plan.input_format, cfg.txt_field):
                if budget is not None and budget <= 0:
                    truncated = True
                    break
                name = u.part_name(u.part_of(i))
                if name != cur:
                    if cur is not None and not cur_done:
                        yield ("end", cur, False)
                    cur, cur_done = name, plan.is_done(name)
                    if cur_done:
                        yield ("skip", name, plan.done[name])
                i += 1
                if budget is not None:
                    budget -= 1
                if seen is not None:
                    if rec.key in seen:
                        raise RecordError(f"key {rec.key!r} appears twice in the input folder (second time in "
                                          f"{u.shard}); keys must be unique across subfolders")
                    seen.add(rec.key)
                if not cur_done:
                    yield ("rec", name, rec)
        except (RecordError, FileNotFoundError) as e:
            log.error("input shard %s failed: %s", u.shard, e)
            yield ("abort", cur if cur is not None and not cur_done else None, u.shard, str(e))
            continue
        if cur is None:
            name = u.part_name(0)
            if not plan.is_done(name):
                yield ("end", name, False)
        elif not cur_done:
            yield ("end", cur, truncated)
        yield ("shard", i)


class _Stop(Exception):
    pass


def run_local(cfg: RunConfig, captioner: Any, plan: Plan, total: int | None = None) -> Summary:
    """Run the job on this machine; returns the summary (not yet timed)."""
    from tqdm.auto import tqdm

    check_modes(captioner, cfg.modes)  # every engine and worker runs through here: refuse before reading
    summary = Summary()
    stop = threading.Event()  # everything stops (a thread failed)
    halt_reader = threading.Event()  # the captioner failed: stop reading, let the writer finish what it has
    failures: list[BaseException] = []
    depth = cfg.batch_size * cfg.prefetch
    q_in: queue.Queue = queue.Queue(maxsize=depth)
    q_out: queue.Queue = queue.Queue(maxsize=depth)
    pool = ThreadPoolExecutor(cfg.decode_workers, thread_name_prefix="recaption-decode")
    bar = tqdm(total=total, unit="img", desc="recaption", disable=not cfg.progress, dynamic_ncols=True,
               smoothing=0.05)

    def put(q: queue.Queue, ev: Event, halt: threading.Event | None = None) -> None:
        while True:
            if stop.is_set() or (halt is not None and halt.is_set()):
                raise _Stop
            try:
                q.put(ev, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(q: queue.Queue) -> Event:
        while True:
            if stop.is_set():
                raise _Stop
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue

    def reader() -> None:
        try:
            for ev in iter_events(plan, cfg):
                if ev[0] == "rec":
                    it = prepare(ev[1], ev[2], cfg)
                    if it.need:
                        it.image = pool.submit(decode_item, it.rec, cfg)
                    ev = ("rec", it)
                put(q_in, ev, halt_reader)
            put(q_in, ("done",), halt_reader)
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            failures.append(e)
            stop.set()

    def writer() -> None:
        writers: dict[str, Any] = {}
        stats: dict[str, PartStats] = {}
        shards_seen = [0, 0]  # input shards finished, their records
        try:
            while True:
                ev = get(q_out)
                kind = ev[0]
                if kind == "rec":
                    it: Item = ev[1]
                    w = writers.get(it.part)
                    if w is None:
                        w = writers[it.part] = rio.open_shard_writer(cfg.output, it.part, plan.output_format,
                                                                     txt_field=cfg.txt_field)
                        stats[it.part] = PartStats()
                    w.write(it.rec)
                    stats[it.part].add(it)
                    bar.update(1)
                    if it.category:
                        bar.set_postfix(errors=summary.errors + sum(sum(s.error_kinds.values())
                                                                    for s in stats.values()), refresh=False)
                elif kind == "end":
                    _, part, truncated = ev
                    w = writers.pop(part, None) or rio.open_shard_writer(
                        cfg.output, part, plan.output_format, txt_field=cfg.txt_field)
                    st = w.close(extra_stats=stats.pop(part, PartStats()).to_dict(truncated))
                    summary.add_part(st, fresh=True)
                elif kind == "skip":
                    summary.add_part(ev[2], fresh=False)
                elif kind == "shard":  # no cheap record count up front: estimate from the shards seen
                    shards_seen[0] += 1
                    shards_seen[1] += ev[1]
                    if total is None:
                        bar.total = round(shards_seen[1] / shards_seen[0] * len(plan.units))
                        bar.refresh()
                elif kind == "abort":
                    _, part, shard, msg = ev
                    if part in writers:
                        writers.pop(part).abort()
                        stats.pop(part, None)
                    summary.failed_shards[shard] = msg
                elif kind == "done":
                    return
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            failures.append(e)
            stop.set()
        finally:
            for w in writers.values():
                w.abort()

    threads = [threading.Thread(target=reader, name="recaption-reader", daemon=True),
               threading.Thread(target=writer, name="recaption-writer", daemon=True)]
    for t in threads:
        t.start()
    batch: list[Item] = []
    held: list[Event] = []

    def flush() -> None:
        for it in batch:
            if isinstance(it.image, Future):
                it.image = it.image.result()
        caption_items(captioner, batch, cfg.modes)
        for it in batch:
            put(q_out, ("rec", it))
        batch.clear()
        for ev in held:
            put(q_out, ev)
        held.clear()

    try:
        while True:
            ev = get(q_in)
            if ev[0] == "rec":
                batch.append(ev[1])
                if len(batch) >= cfg.batch_size:
                    flush()
            elif ev[0] == "done":
                flush()
                put(q_out, ("done",))
                break
            elif batch:
                held.append(ev)
            else:
                put(q_out, ev)
        for t in threads:
            t.join()
    except _Stop:
        pass
    except BaseException:
        # the captioner (or an interrupt) stopped the job: finished parts already queued are still
        # committed, the unfinished ones are dropped by the writer
        halt_reader.set()
        try:
            put(q_out, ("done",))
            threads[1].join()
        except _Stop:
            pass
        stop.set()
        raise
    finally:
        for t in threads:
            t.join(timeout=30)
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    if failures:
        raise failures[0]
    return summary


# -- several worker processes ------------------------------------------------------------------------------
# One Python process tops out at roughly a thousand or two 64 px images per second (tar parsing, PNG
# decoding and writing share one interpreter lock), which a GPU captioner can outrun. ``workers > 1``
# runs that many processes, each with its own captioner (on the same device), each taking whole input
# shards; outputs and resume are the same as with one process.

_WORKER: dict[str, Any] = {}


def _init_worker(cfg: RunConfig, plan: Plan, captioner: Any) -> None:
    import dataclasses

    logging.basicConfig(level=logging.WARNING)
    _WORKER["cfg"] = dataclasses.replace(cfg, progress=False, max_images=None, workers=1)
    _WORKER["plan"] = plan
    _WORKER["captioner"] = captioner if hasattr(captioner, "caption") else captioner()


def _run_unit(index: int) -> str:
    plan: Plan = _WORKER["plan"]
    sub = Plan(plan.input_format, plan.output_format, [plan.units[index]], done=plan.done)
    return run_local(_WORKER["cfg"], _WORKER["captioner"], sub).to_json()


def run_local_processes(cfg: RunConfig, captioner: Any, plan: Plan, total: int | None = None) -> Summary:
    """Run the job in ``cfg.workers`` processes (spawned), one input shard at a time each.

    ``captioner`` is a zero-argument factory (called once in each process) or a picklable captioner.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    if cfg.max_images is not None:
        raise RecordError("--max-images works with one worker only")
    summary = Summary()
    todo = plan.pending(summary)
    if not todo:
        return summary
    with tqdm(total=total, unit="img", desc=f"recaption ({cfg.workers} workers)", disable=not cfg.progress) as bar, \
            ProcessPoolExecutor(min(cfg.workers, len(todo)), mp_context=mp.get_context("spawn"),
                                initializer=_init_worker, initargs=(cfg, plan, captioner)) as ex:
        for fut in as_completed([ex.submit(_run_unit, i) for i in todo]):
            part = Summary.from_json(fut.result())
            summary.merge(part)
            bar.update(part.written_this_run)
    return summary
