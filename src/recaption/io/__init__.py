"""Sources and sinks for :class:`~recaption.records.Record`: image folder + sidecars, WebDataset shards, parquet.

Every reader streams (one record, one tar member group or one parquet row batch at a time) and every
writer writes shards atomically (temporary name, rename, ``NAME_stats.json`` marker last), so any format
converts to any other without loading the dataset and without losing a caption or a metadata field.

- :func:`detect_format`, :func:`read_records`, :func:`open_writer`, :func:`convert`, :func:`info`
- shard level, for the batch job: :func:`list_shards`, :func:`read_shard`, :func:`shard_id`,
  :func:`open_shard_writer`, :func:`shard_done`, :func:`read_shard_stats`

A spec is a local path or an fsspec URL (``memory://``, ``file://``, ``s3://`` with its backend installed):
a folder, a ``.tar`` shard, a brace pattern or glob of shards (``data/{00000..00009}.tar``, ``data/*.tar``),
a ``.parquet`` file or a folder of them. See :mod:`recaption.io.folder`, :mod:`recaption.io.wds` and
:mod:`recaption.io.parquet` for each layout.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from recaption.io import _fs, folder, parquet, wds
from recaption.io.base import STATS_SUFFIX, ShardWriter, stats_path
from recaption.records import IMAGE_EXTS, ORIGINAL, Record, RecordError

log = logging.getLogger(__name__)

FORMATS = ("folder", "wds", "parquet")

SHARD_LISTERS: dict[str, Callable[[str], list[str]]] = {
    "folder": folder.list_shards, "wds": wds.list_shards, "parquet": parquet.list_shards}
SHARD_READERS: dict[str, Callable[..., Iterator[Record]]] = {
    "folder": folder.read_shard, "wds": wds.read_shard, "parquet": parquet.read_shard}
SHARD_WRITERS: dict[str, type[ShardWriter]] = {
    "folder": folder.FolderShardWriter, "wds": wds.WdsShardWriter, "parquet": parquet.ParquetShardWriter}

__all__ = ["FORMATS", "STATS_SUFFIX", "RecordWriter", "ShardWriter", "convert", "detect_format", "info", "list_shards",
           "open_shard_writer", "open_writer", "read_records", "read_shard", "read_shard_stats",
           "shard_done", "shard_id", "check_format"]


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise RecordError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt


def detect_format(spec: str) -> str:
    """'folder', 'wds' or 'parquet' for a path, URL, pattern or folder; FileNotFoundError if nothing is there."""
    fs, paths = _fs.expand(str(spec))
    if not paths:
        raise FileNotFoundError(f"no files match {spec}")
    p = paths[0]
    if wds.is_tar(p):
        return "wds"
    if p.endswith(".parquet"):
        return "parquet"
    if not fs.exists(p):
        raise FileNotFoundError(f"no such file or directory: {spec}")
    if not fs.isdir(p):
        raise RecordError(f"{spec}: cannot tell the format (expected a folder, a .tar shard or a .parquet file)")
    for _, dirnames, filenames in fs.walk(p):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        names = [f for f in filenames if not f.startswith(".")]
        exts = {f.rsplit(".", 1)[-1].lower() for f in names if "." in f}
        if any(wds.is_tar(f) for f in names):
            return "wds"
        if exts & set(IMAGE_EXTS):
            return "folder"
        if "parquet" in exts:
            return "parquet"
        if exts & {"json", "txt"}:
            return "folder"
    raise RecordError(f"{spec}: no images, tar shards or parquet files found")


def list_shards(spec: str, format: str | None = None) -> list[str]:
    """The shards of a dataset (folders, tars or parquet files), sorted; raises if there are none."""
    fmt = check_format(format) if format else detect_format(spec)
    shards = SHARD_LISTERS[fmt](str(spec))
    if not shards:
        raise RecordError(f"{spec}: no {fmt} shards found")
    return shards


def read_shard(shard: str, format: str, txt_field: str = ORIGINAL) -> Iterator[Record]:
    """Stream the records of one shard."""
    return SHARD_READERS[check_format(format)](shard, txt_field=txt_field)


def read_records(spec: str, format: str | None = None, txt_field: str = ORIGINAL) -> Iterator[Record]:
    """Stream every record of a dataset, shard after shard.

    For an image folder (read recursively) a key that appears in two subfolders is an error naming both.
    """
    fmt = check_format(format) if format else detect_format(spec)
    shards = list_shards(spec, fmt)
    seen: dict[str, str] | None = {} if fmt == "folder" else None
    for shard in shards:
        for rec in read_shard(shard, fmt, txt_field):
            if seen is not None:
                if rec.key in seen:
                    raise RecordError(f"key {rec.key!r} appears twice: in {seen[rec.key]} and in {shard}; "
                                      "keys (file names without extension) must be unique across subfolders")
                seen[rec.key] = shard
            yield rec


def shard_id(shard: str) -> str:
    """A shard's name without folder and extension ('…/00012.tar' -> '00012'); folders: their base name."""
    name = _fs.basename(shard)
    for s in wds.TAR_SUFFIXES + (".parquet",):
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


def open_shard_writer(dst: str, name: str, format: str, *, txt_field: str = ORIGINAL) -> ShardWriter:
    """A writer for exactly one output shard ``name`` under folder ``dst`` (atomic; marker on close)."""
    return SHARD_WRITERS[check_format(format)](dst, name, txt_field=txt_field)


def read_shard_stats(dst: str, name: str, format: str) -> dict[str, Any] | None:
    """The stats marker of a finished output shard, or None if the shard is not finished."""
    fs, d = _fs.url_to_fs(dst)
    path = stats_path(fs, d, name, check_format(format))
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("%s: unreadable stats marker; the shard will be redone", path)
        return None


def shard_done(dst: str, name: str, format: str) -> bool:
    """True when output shard ``name`` was completely written (its stats marker exists)."""
    return read_shard_stats(dst, name, format) is not None


class RecordWriter:
    """Writes records into shards of ``shard_size`` records named ``00000``, ``00001``, ... under ``path``.

    A context manager: on an exception the unfinished shard is dropped, the finished ones stay.
    """

    def __init__(self, path: str, format: str, *, shard_size: int = 1000, txt_field: str = ORIGINAL,
                 start_index: int = 0) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.path, self.format = str(path), check_format(format)
        self.shard_size, self.txt_field = shard_size, txt_field
        self.index = start_index
        self.count = 0
        self.stats: list[dict[str, Any]] = []
        self._cur: ShardWriter | None = None

    def write(self, rec: Record) -> None:
        if self._cur is None:
            self._cur = open_shard_writer(self.path, f"{self.index:05d}", self.format, txt_field=self.txt_field)
            self.index += 1
        self._cur.write(rec)
        self.count += 1
        if self._cur.count >= self.shard_size:
            self.stats.append(self._cur.close())
            self._cur = None

    def close(self) -> list[dict[str, Any]]:
        """Finish the last shard; returns the stats of every shard written."""
        if self._cur is not None:
            self.stats.append(self._cur.close())
            self._cur = None
        return self.stats

    def abort(self) -> None:
        if self._cur is not None:
            self._cur.abort()
            self._cur = None

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def open_writer(path: str, format: str, *, shard_size: int = 1000, txt_field: str = ORIGINAL) -> RecordWriter:
    """A streaming writer of ``format`` into folder ``path`` (created if needed)."""
    return RecordWriter(path, format, shard_size=shard_size, txt_field=txt_field)


def _nonempty(spec: str) -> bool:
    fs, p = _fs.url_to_fs(spec)
    if not fs.exists(p):
        return False
    if not fs.isdir(p):
        return True
    return any(not _fs.basename(f).startswith(".") for f in fs.ls(p, detail=False))


def convert(src: str, dst: str, to: str, *, src_format: str | None = None, shard_size: int = 1000,
            txt_field: str = ORIGINAL, overwrite: bool = False, progress: bool = False) -> dict[str, Any]:
    """Copy every record of ``src`` into a new ``to``-format dataset at ``dst``; returns a summary.

    Refuses (FileExistsError) a non-empty ``dst`` unless ``overwrite``: existing shards of the same names
    are then replaced.
    """
    from tqdm.auto import tqdm

    check_format(to)
    if _fs.url_to_fs(str(src))[1].rstrip("/") == _fs.url_to_fs(str(dst))[1].rstrip("/"):
        raise RecordError(f"source and destination are the same: {src}")
    if not overwrite and _nonempty(dst):
        raise FileExistsError(f"{dst} exists and is not empty (pass overwrite to write into it)")
    src_format = check_format(src_format) if src_format else detect_format(src)
    list_shards(src, src_format)  # fail here, before any output, on a bad source
    records = read_records(src, src_format, txt_field)
    with open_writer(dst, to, shard_size=shard_size, txt_field=txt_field) as w:
        for rec in tqdm(records, desc=f"convert -> {to}", unit="rec", disable=not progress):
            w.write(rec)
    stats = w.stats
    return {"records": w.count, "shards": len(stats), "errors": sum(s["errors"] for s in stats),
            "format": to, "path": str(dst)}


def info(spec: str, format: str | None = None, txt_field: str = ORIGINAL) -> dict[str, Any]:
    """Counts of a dataset: records, shards, images and errors, each caption field, image types, meta keys."""
    fmt = check_format(format) if format else detect_format(spec)
    shards = list_shards(spec, fmt)
    captions: Counter[str] = Counter()
    exts: Counter[str] = Counter()
    meta: Counter[str] = Counter()
    n = errors = images = 0
    for rec in read_records(spec, fmt, txt_field):
        n += 1
        errors += rec.error is not None
        if rec.image is not None:
            images += 1
            exts[rec.image_ext] += 1
        captions.update(rec.captions.keys())
        meta.update(rec.meta.keys())
    return {"path": str(spec), "format": fmt, "shards": len(shards), "records": n, "images": images,
            "errors": errors, "captions": dict(captions.most_common()), "image_exts": dict(exts.most_common()),
            "meta_keys": dict(meta.most_common())}

