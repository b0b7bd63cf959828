"""Image folder with sidecars: ``name.png|jpg`` + ``name.txt`` + ``name.json``.

- ``name.txt`` holds one caption (the kohya-ss sd-scripts / taggui convention); ``txt_field`` says which
  (default ``alt``). img2dataset's ``files`` output format has the same layout.
- ``name.json`` is the record's JSON form (captions, provenance, meta, error); a JSON without ``captions``
  (img2dataset's) is kept whole in ``meta``, and the txt becomes ``captions[txt_field]``.
- Subfolders are read recursively: each folder holding images is one shard (kohya's ``10_concept/``,
  img2dataset's ``00000/``). The key is the file name without its extension, so keys must be unique across
  the whole tree; :func:`recaption.io.read_records` raises naming both files when one repeats.
- Names starting with '.' are skipped (the writers' temporary files and the ``.recaption/`` stats folder).
- A sidecar with no image is an error unless its JSON carries an ``error`` (a failed record a job kept).
- The writer writes flat files into the destination folder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from recaption.io import _fs
from recaption.io.base import ShardWriter, decode_text, merge_txt, parse_json, record_json_bytes
from recaption.records import IMAGE_EXTS, ORIGINAL, Record, RecordError, normalize_ext

SIDE_EXTS = ("txt", "json")


def _split(name: str) -> tuple[str, str]:
    stem, _, ext = name.rpartition(".")
    return (stem, ext.lower()) if stem else (name, "")


def _is_record_file(name: str) -> bool:
    if name.startswith("."):
        return False
    _, ext = _split(name)
    return ext in IMAGE_EXTS or ext in SIDE_EXTS


def list_shards(spec: str) -> list[str]:
    """Every folder under ``spec`` (itself included) that holds images or sidecars, sorted."""
    fs, root = _fs.url_to_fs(spec)
    if not fs.isdir(root):
        raise FileNotFoundError(f"no such folder: {spec}")
    out = []
    for dirpath, dirnames, filenames in fs.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if any(_is_record_file(f) for f in filenames):
            out.append(_fs.unstrip(fs, spec, dirpath))
    return sorted(out)


def read_shard(shard: str, txt_field: str = ORIGINAL) -> Iterator[Record]:
    """The records of one folder (not its subfolders), sorted by key."""
    fs, d = _fs.url_to_fs(shard)
    try:
        names = [_fs.basename(p) for p in fs.ls(d, detail=False)]
    except (FileNotFoundError, NotADirectoryError) as e:
        raise FileNotFoundError(f"no such folder: {shard}") from e
    groups: dict[str, dict[str, str]] = {}
    for name in names:
        if not _is_record_file(name):
            continue
        stem, ext = _split(name)
        kind = ext if ext in SIDE_EXTS else "image"
        g = groups.setdefault(stem, {})
        if kind in g:
            raise RecordError(f"{_fs.join(fs, d, g[kind])} and {_fs.join(fs, d, name)}: two images for key {stem!r}")
        g[kind] = name
    for key in sorted(groups):
        yield _load(fs, d, key, groups[key], txt_field)


def _load(fs, d: str, key: str, files: dict[str, str], txt_field: str) -> Record:
    def path(kind: str) -> str:
        return _fs.join(fs, d, files[kind])

    image = fs.cat_file(path("image")) if "image" in files else None
    ext = _split(files["image"])[1] if "image" in files else "png"
    jd = parse_json(fs.cat_file(path("json")), path("json")) if "json" in files else {}
    txt = decode_text(fs.cat_file(path("txt")), path("txt")) if "txt" in files else None
    rec = Record.from_json_dict(jd, image=image, image_ext=ext, key=key,
                                source=path("json") if "json" in files else path(next(iter(files))))
    merge_txt(rec, txt, txt_field)
    if image is None and rec.error is None:
        raise RecordError(f"{path(next(iter(files)))}: record {key!r} has no image file "
                          f"(expected {key}.png, {key}.jpg, ...)")
    return rec


class FolderShardWriter(ShardWriter):
    """Stages one shard's files in a hidden folder, then moves them into place on close."""

    format = "folder"

    def _open(self) -> None:
        self.stage = _fs.tmp_name(self.fs, _fs.join(self.fs, self.dst, self.name))
        _fs.makedirs(self.fs, self.stage)
        self.files: list[str] = []

    def _put(self, name: str, data: bytes) -> None:
        with self.fs.open(_fs.join(self.fs, self.stage, name), "wb") as f:
            f.write(data)
        self.files.append(name)

    def _write(self, rec: Record) -> None:
        if rec.image is not None:
            self._put(f"{rec.key}.{normalize_ext(rec.image_ext)}", rec.image)
        if self.txt_field in rec.captions:
            self._put(f"{rec.key}.txt", rec.captions[self.txt_field].encode("utf-8"))
        self._put(f"{rec.key}.json", record_json_bytes(rec))

    def _commit(self) -> None:
        for name in self.files:
            self.fs.mv(_fs.join(self.fs, self.stage, name), _fs.join(self.fs, self.dst, name))
        self._abort()

    def _abort(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.stage, recursive=True)
