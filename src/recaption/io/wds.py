"""WebDataset tar shards in img2dataset's layout.

A shard ``NNNNN.tar`` holds, per sample, ``key.jpg|png|...`` (the image bytes, never re-encoded),
``key.txt`` (one caption, ``captions[txt_field]``) and ``key.json``. Beside it: ``NNNNN.parquet`` (one row
per sample: key, caption, error and the record's scalar metadata, as img2dataset writes) and
``NNNNN_stats.json``, written last.

Reading accepts img2dataset's own shards: their ``key.json`` is flat (url, key, status, error_message,
width, height, caption, sha256, ...); every field is kept in ``meta`` and ``key.txt`` becomes
``captions[txt_field]``. Members with other extensions are kept in ``meta["wds_extra"][ext]`` when they
are UTF-8 text and dropped (with a warning) otherwise. Keys follow webdataset's rule: the member name up to
its first dot, without directories, so a key written here may not contain a dot.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tarfile
import time
import zlib
from collections.abc import Iterator
from typing import Any

from recaption.io import _fs
from recaption.io.base import ShardWriter, decode_text, merge_txt, parse_json, record_json_bytes
from recaption.records import IMAGE_EXTS, ORIGINAL, Record, RecordError, normalize_ext

log = logging.getLogger(__name__)

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def is_tar(path: str) -> bool:
    return path.lower().endswith(TAR_SUFFIXES)


def shard_id(path: str) -> str:
    """'.../00012.tar' -> '00012'."""
    name = _fs.basename(path)
    for s in TAR_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


def list_shards(spec: str) -> list[str]:
    """Tar shards of a folder (not recursive), or those a path / brace pattern / glob names, sorted."""
    return _fs.list_files(spec, is_tar, recursive=False, what="shard")


def read_shard(shard: str, txt_field: str = ORIGINAL) -> Iterator[Record]:
    """Stream the records of one tar shard (members grouped by key, in file order)."""
    fs, path = _fs.url_to_fs(shard)
    if not fs.exists(path):
        raise FileNotFoundError(f"no such shard: {shard}")
    with fs.open(path, "rb") as f:
        try:
            tf = tarfile.open(fileobj=f, mode="r|*")
        except _TAR_ERRORS as e:
            raise RecordError(f"{shard}: unreadable tar shard: {e}") from e
        key: str | None = None
        members: dict[str, bytes] = {}
        it = iter(tf)
        while True:
            try:
                m = next(it, None)
                data = tf.extractfile(m).read() if m is not None and m.isfile() else None
            except _TAR_ERRORS as e:
                raise RecordError(f"{shard}: unreadable tar shard (corrupt or truncated after "
                                  f"key {key!r}): {type(e).__name__}: {e}") from e
            if m is None:
                break
            if data is None:
                continue
            name = _fs.basename(m.name)
            if name.startswith("."):
                continue
            k, _, ext = name.partition(".")
            ext = ext.lower()
            if k != key:
                if key is not None:
                    yield _assemble(shard, key, members, txt_field)
                key, members = k, {}
            if ext in members:
                raise RecordError(f"{shard}: key {k!r} has two {ext!r} members")
            members[ext] = data
        if not path.lower().endswith((".gz", ".tgz")) and fs.size(path) - tf.offset < 512:
            # tarfile takes a cut at a member boundary for the end; a whole tar ends with zero blocks
            raise RecordError(f"{shard}: truncated tar shard (no end-of-archive marker after key {key!r})")
        if key is not None:
            yield _assemble(shard, key, members, txt_field)


def _assemble(shard: str, key: str, members: dict[str, bytes], txt_field: str) -> Record:
    where = f"{shard}: {key}"
    images = [e for e in members if e in IMAGE_EXTS]
    if len(images) > 1:
        raise RecordError(f"{where}: more than one image member ({', '.join(images)})")
    jd = parse_json(members["json"], f"{where}.json") if "json" in members else {}
    image = members[images[0]] if images else None
    rec = Record.from_json_dict(jd, image=image, image_ext=images[0] if images else "png", key=key,
                                source=f"{where}.json")
    merge_txt(rec, decode_text(members["txt"], f"{where}.txt") if "txt" in members else None, txt_field)
    extra = {}
    for ext, data in members.items():
        if ext in images or ext in ("json", "txt"):
            continue
        try:
            extra[ext] = data.decode("utf-8")
        except UnicodeDecodeError:
            log.warning("%s.%s: binary member dropped", where, ext)
    if extra:
        rec.meta.setdefault("wds_extra", {}).update(extra)
    if image is None and rec.error is None:
        raise RecordError(f"{where}: record has no image member (expected {key}.jpg, {key}.png, ...)")
    return rec


def _flat_row(rec: Record, txt_field: str) -> dict[str, Any]:
    row: dict[str, Any] = {"key": rec.key, "caption": rec.captions.get(txt_field), "error": rec.error}
    for k, v in rec.meta.items():
        if k not in row and (v is None or isinstance(v, (str, int, float, bool))):
            row[k] = v
    return row


def write_index(fs: Any, path: str, rows: list[dict[str, Any]]) -> None:
    """img2dataset's per-shard parquet: one row per sample, scalar columns (mixed types become JSON text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, list[Any]] = {}
    for i, row in enumerate(rows):
        for k in row:
            cols.setdefault(k, [None] * i)
        for k in cols:
            cols[k].append(row.get(k))
    arrays = {}
    for k, vals in cols.items():
        try:
            arrays[k] = pa.array(vals)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            arrays[k] = pa.array([None if v is None else json.dumps(v) for v in vals], pa.string())
    table = pa.table(arrays) if arrays else pa.table({"key": pa.array([], pa.string())})
    with _fs.atomic_open(fs, path, "wb") as f:
        pq.write_table(table, f)


class WdsShardWriter(ShardWriter):
    """``NAME.tar`` (+ ``NAME.parquet``), each written under a temporary name and renamed on close."""

    format = "wds"

    def _open(self) -> None:
        self.final = _fs.join(self.fs, self.dst, self.name + ".tar")
        self.tmp = _fs.tmp_name(self.fs, self.final)
        self.f = self.fs.open(self.tmp, "wb")
        self.tar = tarfile.open(fileobj=self.f, mode="w", format=tarfile.GNU_FORMAT)
        self.rows: list[dict[str, Any]] = []
        self.mtime = time.time()

    def _add(self, name: str, data: bytes) -> None:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode = len(data), self.mtime, 0o444
        self.tar.addfile(ti, io.BytesIO(data))

    def _write(self, rec: Record) -> None:
        if "." in rec.key:
            raise RecordError(f"record {rec.key!r}: a WebDataset key cannot contain '.'")
        if rec.image is not None:
            self._add(f"{rec.key}.{normalize_ext(rec.image_ext)}", rec.image)
        if self.txt_field in rec.captions:
            self._add(f"{rec.key}.txt", rec.captions[self.txt_field].encode("utf-8"))
        self._add(f"{rec.key}.json", record_json_bytes(rec))
        self.rows.append(_flat_row(rec, self.txt_field))

    def _commit(self) -> None:
        self.tar.close()
        self.f.close()
        write_index(self.fs, _fs.join(self.fs, self.dst, self.name + ".parquet"), self.rows)
        self.fs.mv(self.tmp, self.final)

    def _abort(self) -> None:
        with contextlib.suppress(Exception):
            self.tar.close()
        with contextlib.suppress(Exception):
            self.f.close()
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.tmp)
