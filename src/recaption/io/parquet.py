"""Parquet tables (pyarrow), read one row group batch at a time.

Written layout, one file per shard (``NNNNN.parquet`` + ``NNNNN_stats.json``), lossless for every field:

    key: string | image: binary (the encoded bytes) | image_ext: string | caption: string | json: string

``json`` is the record's JSON form (captions, provenance, meta, error); ``caption`` repeats
``captions[txt_field]`` for tools that read a plain caption column.

Also read: a user's plain table. Columns are recognised by name —
key: ``key`` / ``__key__`` (else ``<file stem>_<row>``); image: ``image`` (binary, a Hugging Face
``{bytes, path}`` struct, or a path string), ``jpg`` / ``png`` / ``webp`` / ``image_bytes`` (img2dataset's
parquet output), or a path column ``image_path`` / ``path`` / ``file_name`` / ``filepath`` (relative to the
parquet file's folder, or absolute, or a URL); the original caption: ``caption`` / ``text`` / ``txt`` /
``alt`` / ``alt_text``; other named captions: a ``captions`` struct or JSON column, or ``caption_<name>``
columns. Every other column lands in ``meta``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import decimal
import logging
from collections.abc import Iterator
from typing import Any

from recaption.io import _fs
from recaption.io.base import ShardWriter, merge_txt, parse_json, record_json_bytes
from recaption.records import ORIGINAL, Record, RecordError, normalize_ext, sniff_ext

log = logging.getLogger(__name__)

KEY_COLS = ("key", "__key__")
IMAGE_COLS = ("image", "jpg", "png", "webp", "image_bytes")
PATH_COLS = ("image_path", "path", "file_name", "filepath")
CAPTION_COLS = ("caption", "text", "txt", "alt", "alt_text")
BATCH_ROWS = 64
ROW_GROUP_ROWS = 256
ROW_GROUP_BYTES = 64 << 20


def _arrow_errors() -> tuple[type[BaseException], ...]:
    import pyarrow as pa

    return (pa.ArrowException, OSError, ValueError)


def list_shards(spec: str) -> list[str]:
    """Parquet files of a folder (recursive, hidden names skipped), or those a path / pattern names, sorted."""
    return _fs.list_files(spec, lambda f: f.endswith(".parquet"), recursive=True, what="parquet file")


def read_shard(shard: str, txt_field: str = ORIGINAL) -> Iterator[Record]:
    """Stream the records of one parquet file, ``BATCH_ROWS`` rows at a time."""
    import pyarrow.parquet as pq

    fs, path = _fs.url_to_fs(shard)
    if not fs.exists(path):
        raise FileNotFoundError(f"no such parquet file: {shard}")
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    stem = _fs.basename(path).split(".", 1)[0]
    errors = _arrow_errors()
    with fs.open(path, "rb") as f:
        try:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            batches = pf.iter_batches(batch_size=BATCH_ROWS)
        except errors as e:
            raise RecordError(f"{shard}: unreadable parquet file: {e}") from e
        roles = _roles(names)
        if roles["image"] is None and roles["path"] is None and roles["json"] is None:
            raise RecordError(f"{shard}: no image column (looked for {', '.join(IMAGE_COLS + PATH_COLS)}; "
                              f"columns are {', '.join(names)})")
        row = 0
        while True:
            try:
                batch = next(batches, None)
                rows = batch.to_pylist() if batch is not None else []
            except errors as e:
                raise RecordError(f"{shard}: unreadable parquet file (row {row}): {e}") from e
            if batch is None:
                break
            for d in rows:
                yield _to_record(d, roles, fs, parent, stem, row, shard, txt_field)
                row += 1


def _roles(names: list[str]) -> dict[str, Any]:
    def first(cands: tuple[str, ...]) -> str | None:
        return next((c for c in cands if c in names), None)

    return {"key": first(KEY_COLS), "image": first(IMAGE_COLS), "path": first(PATH_COLS),
            "caption": first(CAPTION_COLS), "json": "json" if "json" in names else None,
            "ext": "image_ext" if "image_ext" in names else None,
            "captions": "captions" if "captions" in names else None}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time)):
        return v.isoformat()
    if isinstance(v, _dt.timedelta):
        return v.total_seconds()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _to_record(d: dict[str, Any], roles: dict[str, Any], fs: Any, parent: str, stem: str, row: int,
               shard: str, txt_field: str) -> Record:
    where = f"{shard}: row {row}"
    key = d.get(roles["key"]) if roles["key"] else None
    key = str(key) if key is not None else f"{stem.replace('.', '_')}_{row:09d}"
    where = f"{where} (key {key!r})"
    image, path = d.get(roles["image"]) if roles["image"] else None, None
    if isinstance(image, dict):  # Hugging Face datasets' Image feature
        image, path = image.get("bytes"), image.get("path")
    elif isinstance(image, str):
        image, path = None, image
    if image is None and path is None and roles["path"]:
        path = d.get(roles["path"])
    missing = None
    if image is None and path:
        try:
            image = _read_path(fs, parent, path, where)
        except RecordError as e:  # one row's lost file is that record's error, not the shard's end
            missing = str(e)
    ext = d.get(roles["ext"]) if roles["ext"] else None
    if not ext:
        ext = path.rsplit(".", 1)[-1] if path and "." in _fs.basename(path) else (sniff_ext(image) if image else "png")
    jd = parse_json(d[roles["json"]], f"{where} json") if roles["json"] and d.get(roles["json"]) else {}
    if not isinstance(jd, dict):
        raise RecordError(f"{where}: json column must hold a JSON object")
    used = {c for c in roles.values() if c}
    caps = d.get(roles["captions"]) if roles["captions"] else None
    if isinstance(caps, str):
        caps = parse_json(caps, f"{where} captions")
    extra_caps = {n[len("caption_"):]: v for n, v in d.items()
                  if n.startswith("caption_") and isinstance(v, str)}
    if caps or extra_caps:
        jd.setdefault("captions", {})
        jd["captions"] = {**extra_caps, **({k: v for k, v in (caps or {}).items() if v is not None}),
                          **jd["captions"]}
    try:
        rec = Record.from_json_dict(jd, image=image, image_ext=str(ext), key=key, source=where)
    except RecordError:
        raise
    except ValueError as e:
        raise RecordError(f"{where}: {e}") from e
    cap = d.get(roles["caption"]) if roles["caption"] else None
    merge_txt(rec, cap if isinstance(cap, str) else None, txt_field)
    for n, v in d.items():
        if n in used or n.startswith("caption_") or n in rec.meta:
            continue
        if isinstance(v, bytes):
            log.debug("%s: binary column %r not kept", where, n)
            continue
        rec.meta[n] = _jsonable(v)
    if image is None and rec.error is None:
        rec.error = missing or f"{where}: record has no image"
    return rec


def _read_path(fs: Any, parent: str, path: str, where: str) -> bytes:
    if "://" in path:
        pfs, p = _fs.url_to_fs(path)
    else:
        pfs, p = fs, (path if path.startswith("/") or not parent else _fs.join(fs, parent, path))
    try:
        return pfs.cat_file(p)
    except (FileNotFoundError, IsADirectoryError) as e:
        raise RecordError(f"{where}: image file {path!r} not found") from e


class ParquetShardWriter(ShardWriter):
    """``NAME.parquet`` in the lossless layout, written under a temporary name and renamed on close."""

    format = "parquet"

    def _open(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        self.schema = pa.schema([("key", pa.string()), ("image", pa.binary()), ("image_ext", pa.string()),
                                 ("caption", pa.string()), ("json", pa.string())])
        self.final = _fs.join(self.fs, self.dst, self.name + ".parquet")
        self.tmp = _fs.tmp_name(self.fs, self.final)
        self.f = self.fs.open(self.tmp, "wb")
        self.writer = pq.ParquetWriter(self.f, self.schema)
        self._reset()

    def _reset(self) -> None:
        self.buf: dict[str, list[Any]] = {n: [] for n in self.schema.names}
        self.buf_bytes = 0

    def _flush(self) -> None:
        if self.buf["key"]:
            self.writer.write_table(self.pa.Table.from_pydict(self.buf, self.schema))
            self._reset()

    def _write(self, rec: Record) -> None:
        self.buf["key"].append(rec.key)
        self.buf["image"].append(rec.image)
        self.buf["image_ext"].append(normalize_ext(rec.image_ext))
        self.buf["caption"].append(rec.captions.get(self.txt_field))
        self.buf["json"].append(record_json_bytes(rec).decode("utf-8"))
        self.buf_bytes += len(rec.image or b"")
        if len(self.buf["key"]) >= ROW_GROUP_ROWS or self.buf_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _commit(self) -> None:
        self._flush()
        self.writer.close()
        self.f.close()
        self.fs.mv(self.tmp, self.final)

    def _abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(Exception):
            self.f.close()
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.tmp)
