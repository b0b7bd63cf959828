"""What every format shares: the shard writer base (atomic output, ``NAME_stats.json`` marker) and JSON parsing."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any

from recaption.io import _fs
from recaption.records import ORIGINAL, Record, RecordError

log = logging.getLogger(__name__)

STATS_SUFFIX = "_stats.json"


def parse_json(data: bytes | str, where: str) -> Any:
    """json.loads with an error that names the file or member it came from."""
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{where}: invalid JSON: {e}") from e


def decode_text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"{where}: caption is not UTF-8 text: {e}") from e


def record_json_bytes(rec: Record) -> bytes:
    """The record's JSON form as UTF-8 bytes; names the key if its metadata is not JSON-serialisable."""
    try:
        return json.dumps(rec.to_json_dict(), ensure_ascii=False, sort_keys=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise RecordError(f"record {rec.key!r}: metadata is not JSON-serialisable: {e}") from e


def merge_txt(rec: Record, txt: str | None, txt_field: str) -> None:
    """A ``.txt`` sidecar fills ``captions[txt_field]`` when the JSON did not already carry that caption.

    The JSON form is authoritative (it carries provenance); the txt is the kohya/taggui/img2dataset caption.
    """
    if txt is not None and txt_field not in rec.captions:
        rec.captions[txt_field] = txt


class ShardWriter:
    """Writes one output shard atomically; subclasses implement ``_open``, ``_write``, ``_commit``, ``_abort``.

    Nothing appears under the final name until :meth:`close`, and the ``NAME_stats.json`` marker is written
    last, so a shard with a marker is complete (a resumed job skips it) and one without it is redone.
    """

    format: str = ""

    def __init__(self, dst: str, name: str, *, txt_field: str = ORIGINAL) -> None:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"shard name must be a plain file name, got {name!r}")
        self.fs, self.dst = _fs.url_to_fs(dst)
        self.spec = dst
        self.name = name
        self.txt_field = txt_field
        self.count = 0
        self.errors = 0
        self.caption_counts: Counter[str] = Counter()
        self.start_time = time.time()
        self._closed = False
        _fs.makedirs(self.fs, self.dst)
        self._open()

    # -- public ----------------------------------------------------------------------------------------
    def write(self, rec: Record) -> None:
        if self._closed:
            raise RuntimeError(f"shard writer {self.name!r} is closed")
        self._write(rec)
        self.count += 1
        self.errors += rec.error is not None
        self.caption_counts.update(rec.captions.keys())

    def close(self, extra_stats: dict[str, Any] | None = None) -> dict[str, Any]:
        """Commit the shard under its final name, then write the stats marker; returns the stats."""
        if self._closed:
            return {}
        self._closed = True
        self._commit()
        end = time.time()
        stats = {"name": self.name, "format": self.format, "count": self.count,
                 "successes": self.count - self.errors, "errors": self.errors,
                 "captions": dict(sorted(self.caption_counts.items())),
                 "start_time": self.start_time, "end_time": end, "duration": end - self.start_time}
        stats.update(extra_stats or {})
        path = stats_path(self.fs, self.dst, self.name, self.format)
        _fs.makedirs(self.fs, path.rsplit("/", 1)[0])
        with _fs.atomic_open(self.fs, path, "wb") as f:
            f.write(json.dumps(stats, indent=2).encode())
        return stats

    def abort(self) -> None:
        """Drop everything written so far (no output, no marker)."""
        if not self._closed:
            self._closed = True
            self._abort()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- for subclasses ----------------------------------------------------------------------------------
    def _open(self) -> None:
        raise NotImplementedError

    def _write(self, rec: Record) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError


def stats_path(fs: Any, dst: str, name: str, fmt: str) -> str:
    """Where shard ``name``'s stats marker lives: beside the shard (img2dataset's convention) for wds and
    parquet; in the hidden ``.recaption/`` folder for an image folder, so the folder reader never sees it."""
    if fmt == "folder":
        return _fs.join(fs, dst, ".recaption", name + STATS_SUFFIX)
    return _fs.join(fs, dst, name + STATS_SUFFIX)
