"""The pieces every engine shares: the run config, the plan of output shards, per-record preparation,
batch captioning with per-record retry, and the statistics that go into each shard's ``_stats.json``.

Output naming and resume. Each input shard becomes one output shard of the same name (``00012.tar`` ->
``00012.tar``), or, when ``part_size`` > 0, output parts of ``part_size`` input records named
``00012_00000``, ``00012_00001``, ... (an image folder is split into parts of 1,000 by default, so that a
killed job over one big folder redoes at most one part). A part is finished when its stats marker exists
and does not say ``truncated`` (a part cut short by ``max_images``); a resumed job skips finished parts
and redoes the others from their first record, so every input record lands in the output exactly once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from recaption import io as rio
from recaption.io import _fs
from recaption.pipeline.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from recaption.records import ORIGINAL, Record, RecordError

log = logging.getLogger(__name__)

FOLDER_PART_SIZE = 1000
RUN_DIR = ".recaption"


@dataclass(frozen=True)
class RunConfig:
    """Everything a recaption job needs; saved as ``OUTPUT/.recaption/run.json``."""

    input: str
    output: str
    captioner: str = ""
    modes: tuple[str, ...] = ("short", "descriptive")
    input_format: str | None = None
    output_format: str | None = None  # None: same as the input
    engine: str = "local"
    batch_size: int = 16
    device: str = "cpu"
    dtype: str | None = None
    decode_workers: int = 2  # background decode threads (per captioner worker)
    prefetch: int = 4  # batches decoded ahead of the captioner
    workers: int = 1  # captioner workers (ray engine: actors)
    num_gpus_per_worker: float = 0.0
    max_images: int | None = None
    skip_existing: bool = True  # keep captions a record already has in a requested mode
    overwrite: bool = False  # ignore finished output shards and redo everything
    fail_on_error: bool = False
    txt_field: str = ORIGINAL
    part_size: int | None = None  # None: 1,000 for an image folder, whole shards otherwise
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int | None = None
    seed: int = 0
    progress: bool = True
    views: int = 1  # clip-prefix: test-time views of each image (``DecodeConfig.views``)
    combine: str = "probs"  # clip-prefix: how the views make one caption (``DecodeConfig.combine``)
    view_shift: int = 1  # clip-prefix: the views' largest offset in pixels (``DecodeConfig.view_shift``)

    def __post_init__(self) -> None:
        from recaption.captioners.base import check_mode

        object.__setattr__(self, "modes", tuple(self.modes))
        if not self.modes:
            raise RecordError("no caption modes given")
        for m in self.modes:
            try:
                check_mode(m)
            except ValueError as e:
                raise RecordError(str(e)) from e
        if self.batch_size < 1 or self.decode_workers < 1 or self.prefetch < 1 or self.workers < 1:
            raise RecordError("batch_size, decode_workers, prefetch and workers must be >= 1")
        for f in (self.input_format, self.output_format):
            if f is not None:
                rio.check_format(f)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["modes"] = list(self.modes)
        return d


# -- the plan ---------------------------------------------------------------------------------------------


@dataclass
class Unit:
    """One input shard and the output names it maps to."""

    shard: str
    sid: str
    part_size: int  # 0: the whole shard is one output shard named ``sid``

    def part_name(self, p: int) -> str:
        return self.sid if self.part_size <= 0 else f"{self.sid}_{p:05d}"

    def part_of(self, index: int) -> int:
        return 0 if self.part_size <= 0 else index // self.part_size


@dataclass
class Plan:
    input_format: str
    output_format: str
    units: list[Unit]
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # finished part name -> its stats

    def is_done(self, name: str) -> bool:
        return name in self.done

    def pending(self, summary: Summary) -> list[int]:
        """Indices of units still to run; finished whole-shard units are credited to ``summary`` instead."""
        todo = []
        for i, u in enumerate(self.units):
            if u.part_size <= 0 and self.is_done(u.sid):
                summary.add_part(self.done[u.sid], fresh=False)
            else:
                todo.append(i)
        return todo


def _folder_sid(root: str, shard: str) -> str:
    _, r = _fs.url_to_fs(root)
    _, s = _fs.url_to_fs(shard)
    rel = s[len(r.rstrip("/")):].strip("/")
    return rel.replace("/", "_") if rel else (_fs.basename(r) or "root")


def make_plan(cfg: RunConfig) -> Plan:
    """List the input shards, name their outputs, and read which output parts are already finished."""
    ifmt = cfg.input_format or rio.detect_format(cfg.input)
    ofmt = cfg.output_format or ifmt
    shards = rio.list_shards(cfg.input, ifmt)
    part_size = cfg.part_size if cfg.part_size is not None else (FOLDER_PART_SIZE if ifmt == "folder" else 0)
    units, seen = [], {}
    for s in shards:
        sid = _folder_sid(cfg.input, s) if ifmt == "folder" else rio.shard_id(s)
        if sid in seen:
            raise RecordError(f"two input shards would write the same output shard {sid!r}: {seen[sid]} and {s}")
        if "." in sid or sid.startswith("."):
            sid = sid.replace(".", "_").lstrip("_") or "shard"
        seen[sid] = s
        units.append(Unit(s, sid, part_size))
    plan = Plan(ifmt, ofmt, units)
    if not cfg.overwrite:
        plan.done = finished_parts(cfg.output, ofmt)
    return plan


def finished_parts(output: str, fmt: str) -> dict[str, dict[str, Any]]:
    """Stats of every finished output part (marker present, not truncated)."""
    fs, d = _fs.url_to_fs(output)
    folder = _fs.join(fs, d, ".recaption") if fmt == "folder" else d
    if not fs.isdir(folder):
        return {}
    out = {}
    for p in fs.ls(folder, detail=False):
        name = _fs.basename(p)
        if name.endswith(rio.STATS_SUFFIX) and not name.startswith("."):
            part = name[: -len(rio.STATS_SUFFIX)]
            st = rio.read_shard_stats(output, part, fmt)
            if st is not None and not st.get("truncated"):
                out[part] = st
    return out


def check_run_config(cfg: RunConfig, plan: Plan) -> None:
    """Save the run config; refuse to resume into an output written with a different layout."""
    fs, d = _fs.url_to_fs(cfg.output)
    path = _fs.join(fs, d, RUN_DIR, "run.json")
    mine = {**cfg.to_dict(), "output_format": plan.output_format, "input_format": plan.input_format,
            "part_size": plan.units[0].part_size if plan.units else 0}
    if fs.exists(path) and not cfg.overwrite and plan.done:
        old = json.loads(fs.cat_file(path))
        for k in ("input", "output_format", "part_size", "modes"):
            if old.get(k) != mine.get(k):
                raise RecordError(f"{cfg.output} holds the output of a different job ({k}: {old.get(k)!r}, "
                                  f"now {mine.get(k)!r}); use another output folder or overwrite")
    _fs.makedirs(fs, _fs.join(fs, d, RUN_DIR))
    with _fs.atomic_open(fs, path, "wb") as f:
        f.write(json.dumps(mine, indent=2).encode())


def clean_temporaries(output: str) -> int:
    """Remove temporary files a killed job left (hidden ``.NAME.tmp-*``); returns how many."""
    fs, d = _fs.url_to_fs(output)
    if not fs.isdir(d):
        return 0
    n = 0
    for p in fs.ls(d, detail=False):
        if _fs.basename(p).startswith(".") and ".tmp-" in _fs.basename(p):
            fs.rm(p, recursive=True)
            n += 1
    return n


# -- records ------------------------------------------------------------------------------------------------


@dataclass
class Item:
    """A record on its way through the job, with what it needs and what happened to it."""

    part: str
    rec: Record
    need: list[str]
    image: Any = None  # decoded RGB PIL image, or a Future of one
    captioned: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def category(self) -> str | None:
        return self.rec.error.split(":", 1)[0] if self.rec.error else None


def prepare(part: str, rec: Record, cfg: RunConfig) -> Item:
    """Which modes a record needs; a record that failed earlier and has no image passes through."""
    if rec.image is None:
        return Item(part, rec, [], skipped=[])
    need = [m for m in cfg.modes if not (cfg.skip_existing and m in rec.captions)]
    skipped = [m for m in cfg.modes if m not in need]
    if need:
        rec.error = None  # the error field describes this run's outcome
    return Item(part, rec, need, skipped=skipped)


def decode_item(rec: Record, cfg: RunConfig) -> Any:
    """Decode for the captioner; a :class:`DecodeError` is returned (not raised) so a worker thread can carry it."""
    try:
        return decode_image(rec.image, cfg.max_pixels, cfg.max_side)
    except DecodeError as e:
        return e


def caption_items(captioner: Any, items: list[Item], modes: tuple[str, ...]) -> None:
    """Caption every item that needs it, mode by mode, one captioner call per mode for the whole batch.

    When a batch call raises, each of its images is retried alone, so one bad image (or a flaky batch)
    costs only that image: it keeps its other captions and gets ``error = "captioner: ..."``.
    Items whose ``image`` is a :class:`DecodeError` get that error and are not captioned.
    """
    for it in items:
        if isinstance(it.image, DecodeError):
            it.rec.error = str(it.image)
            it.image = None
    for mode in modes:
        todo = [it for it in items if mode in it.need and it.image is not None and it.rec.error is None]
        if not todo:
            continue
        prov = captioner.provenance(mode)
        try:
            caps = _call(captioner, [it.image for it in todo], mode)
        except Exception as e:  # noqa: BLE001 - any captioner failure: retry the images one by one
            log.warning("captioner failed on a batch of %d (%s: %s); retrying one by one",
                        len(todo), type(e).__name__, e)
            caps = []
            for it in todo:
                try:
                    caps.append(_call(captioner, [it.image], mode)[0])
                except Exception as e1:  # noqa: BLE001
                    caps.append(None)
                    it.rec.error = f"captioner: {mode}: {type(e1).__name__}: {e1}"
        for it, cap in zip(todo, caps, strict=True):
            if cap is not None:
                it.rec.set_caption(mode, cap, prov)
                it.captioned.append(mode)
    for it in items:
        it.image = None  # free the pixels before the record goes to the writer


def _call(captioner: Any, images: list[Any], mode: str) -> list[str]:
    out = captioner.caption(images, mode)
    if not isinstance(out, list) or len(out) != len(images) or not all(isinstance(c, str) for c in out):
        raise ValueError(f"captioner returned {type(out).__name__} of {len(out) if hasattr(out, '__len__') else '?'} "
                         f"items for {len(images)} images; expected one string per image")
    return out


# -- statistics ------------------------------------------------------------------------------------------


@dataclass
class PartStats:
    """What happened to the records of one output part; goes into its ``_stats.json``."""

    input_records: int = 0
    captioned: Counter = field(default_factory=Counter)
    skipped_existing: Counter = field(default_factory=Counter)
    error_kinds: Counter = field(default_factory=Counter)
    start: float = field(default_factory=time.time)

    def add(self, it: Item) -> None:
        self.input_records += 1
        self.captioned.update(it.captioned)
        self.skipped_existing.update(it.skipped)
        if it.category:
            self.error_kinds[it.category] += 1

    def to_dict(self, truncated: bool = False) -> dict[str, Any]:
        return {"input_records": self.input_records, "captioned": dict(self.captioned),
                "skipped_existing": dict(self.skipped_existing), "error_kinds": dict(self.error_kinds),
                "truncated": truncated, "job_seconds": time.time() - self.start}


@dataclass
class Summary:
    """The whole job's outcome (also written to ``OUTPUT/.recaption/summary.json``)."""

    records: int = 0
    written_this_run: int = 0
    captioned: Counter = field(default_factory=Counter)
    skipped_existing: Counter = field(default_factory=Counter)
    error_kinds: Counter = field(default_factory=Counter)
    parts_written: int = 0
    parts_skipped: int = 0
    failed_shards: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def errors(self) -> int:
        return sum(self.error_kinds.values())

    def add_part(self, stats: dict[str, Any], fresh: bool) -> None:
        self.records += stats.get("input_records", stats.get("count", 0))
        if fresh:
            self.written_this_run += stats.get("input_records", 0)
            self.parts_written += 1
        else:
            self.parts_skipped += 1
        self.captioned.update(stats.get("captioned", {}))
        self.skipped_existing.update(stats.get("skipped_existing", {}))
        self.error_kinds.update(stats.get("error_kinds", {}))

    def to_dict(self) -> dict[str, Any]:
        return {"records": self.records, "written_this_run": self.written_this_run,
                "captioned": dict(self.captioned), "skipped_existing": dict(self.skipped_existing),
                "errors": self.errors, "error_kinds": dict(self.error_kinds), "parts_written": self.parts_written,
                "parts_skipped": self.parts_skipped, "failed_shards": dict(self.failed_shards),
                "seconds": round(self.seconds, 3),
                "images_per_second": round(self.written_this_run / self.seconds, 2) if self.seconds else None}

    def merge(self, other: Summary) -> None:
        """Add another summary's counts (the ray engine sums its per-shard summaries)."""
        self.records += other.records
        self.written_this_run += other.written_this_run
        self.captioned.update(other.captioned)
        self.skipped_existing.update(other.skipped_existing)
        self.error_kinds.update(other.error_kinds)
        self.parts_written += other.parts_written
        self.parts_skipped += other.parts_skipped
        self.failed_shards.update(other.failed_shards)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Summary:
        d = json.loads(text)
        return cls(records=d["records"], written_this_run=d["written_this_run"], captioned=Counter(d["captioned"]),
                   skipped_existing=Counter(d["skipped_existing"]), error_kinds=Counter(d["error_kinds"]),
                   parts_written=d["parts_written"], parts_skipped=d["parts_skipped"],
                   failed_shards=dict(d["failed_shards"]), seconds=d["seconds"])

    def line(self) -> str:
        caps = ", ".join(f"{k} {v}" for k, v in sorted(self.captioned.items())) or "none"
        errs = ", ".join(f"{k} {v}" for k, v in sorted(self.error_kinds.items()))
        s = (f"{self.records} records ({self.written_this_run} written this run in {self.parts_written} shards, "
             f"{self.parts_skipped} shards already done); captioned: {caps}; "
             f"errors: {self.errors}" + (f" ({errs})" if errs else ""))
        if self.failed_shards:
            s += f"; FAILED shards: {len(self.failed_shards)} (" + "; ".join(
                f"{k}: {v}" for k, v in self.failed_shards.items()) + ")"
        if self.seconds and self.written_this_run:
            s += f"; {self.written_this_run / self.seconds:.1f} img/s"
        return s


def estimate_total(plan: Plan) -> int | None:
    """Input records, when cheap to know: parquet row counts, folder image counts, or img2dataset stats."""
    total = 0
    try:
        for u in plan.units:
            fs, p = _fs.url_to_fs(u.shard)
            if plan.input_format == "parquet":
                import pyarrow.parquet as pq

                with fs.open(p, "rb") as f:
                    total += pq.ParquetFile(f).metadata.num_rows
            elif plan.input_format == "folder":
                total += sum(1 for f in fs.ls(p, detail=False)
                             if _fs.basename(f).rsplit(".", 1)[-1].lower() in rio.IMAGE_EXTS
                             and not _fs.basename(f).startswith("."))
            else:
                sp = p.rsplit(".tar", 1)[0] + rio.STATS_SUFFIX
                if not fs.exists(sp):
                    return None
                st = json.loads(fs.cat_file(sp))
                ours = "format" in st  # our marker counts every record; img2dataset's tar holds its successes
                total += int(st.get("input_records") or (st["count"] if ours else st["successes"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return total


def check_modes(captioner: Any, modes: Sequence[str]) -> None:
    """Refuse, before any record is read, a captioner that cannot write one of ``modes`` (e.g. a checkpoint
    fine-tuned for short captions asked for descriptive ones): a whole job of error records helps nobody.
    Captioners say so through an optional ``check_mode(mode)`` that raises; others are trusted."""
    from recaption.captioners.base import CaptionerError

    check = getattr(captioner, "check_mode", None)
    if check is None:
        return
    for mode in modes:
        try:
            check(mode)
        except CaptionerError as e:
            raise RecordError(f"captioner cannot write {mode!r} captions: {e}") from e
