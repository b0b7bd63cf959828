"""The sample record: one image with its named captions, their provenance and free metadata.

Every reader yields :class:`Record` and every writer takes it, so any format converts to any other.
The image is kept as its encoded bytes (never re-encoded on a round trip); decode it with
:meth:`Record.pil` when pixels are needed.

On-disk JSON form (the sidecar ``name.json`` of an image folder, ``key.json`` in a WebDataset shard,
the ``json`` column of a parquet table) is :meth:`Record.to_json_dict`::

    {"key": "000123",
     "captions": {"alt": "...", "short": "...", "descriptive": "..."},
     "provenance": {"short": {"captioner": "clip-prefix", "version": "...", "mode": "short",
                              "prompt": null, "created": "2026-11-26T06:00:00+00:00", "extra": {}}},
     "meta": {...},            # everything else, JSON-serialisable (img2dataset's fields land here)
     "error": null}

Truth in the shapes world never sits in ``captions``: it lives under ``meta["world"]`` (see
:mod:`recaption.world`), so training code that reads ``captions`` cannot mistake it for a synthetic caption.
"""

from __future__ import annotations

import datetime as _dt
import io
from dataclasses import dataclass, field
from typing import Any

ORIGINAL = "alt"
"""The caption field that holds the original (alt-text / web) caption."""

SYNTHETIC_MODES = ("short", "descriptive")
"""The synthetic caption fields of the paper: short (SSC) and descriptive (DSC) synthetic captions."""

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")


class RecordError(ValueError):
    """A record, or the input it came from, is malformed; the message names the input and the problem."""


@dataclass(frozen=True)
class Provenance:
    """Where a synthetic caption came from: which captioner, which version, which mode or prompt, when."""

    captioner: str
    version: str = ""
    mode: str = ""
    prompt: str | None = None
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def now(cls, captioner: str, version: str = "", mode: str = "", prompt: str | None = None,
            **extra: Any) -> Provenance:
        """A provenance stamped with the current UTC time."""
        created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        return cls(captioner=captioner, version=version, mode=mode, prompt=prompt, created=created,
                   extra=dict(extra))

    def to_dict(self) -> dict[str, Any]:
        return {"captioner": self.captioner, "version": self.version, "mode": self.mode,
                "prompt": self.prompt, "created": self.created, "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Provenance:
        if not isinstance(d, dict) or "captioner" not in d:
            raise RecordError(f"provenance must be an object with a 'captioner' field, got {d!r}")
        return cls(captioner=str(d["captioner"]), version=str(d.get("version", "")),
                   mode=str(d.get("mode", "")), prompt=d.get("prompt"), created=str(d.get("created", "")),
                   extra=dict(d.get("extra") or {}))


@dataclass
class Record:
    """One sample: ``key``, encoded ``image`` bytes with their extension, named captions, provenance, meta.

    ``image`` may be ``None`` for a record that failed to load (``error`` then says why), so that a batch
    job can carry the failure through to its output instead of dropping the sample.
    """

    key: str
    image: bytes | None = None
    image_ext: str = "png"
    captions: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Provenance] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise RecordError(f"record key must be a non-empty string, got {self.key!r}")
        if "/" in self.key or "\\" in self.key or self.key.startswith("."):
            raise RecordError(f"record key {self.key!r} may not contain path separators or start with '.'")
        self.image_ext = normalize_ext(self.image_ext)

    # -- captions -----------------------------------------------------------------------------------
    def set_caption(self, name: str, text: str, provenance: Provenance | None = None) -> None:
        """Set caption ``name``; a synthetic caption should come with its provenance."""
        self.captions[name] = text
        if provenance is not None:
            self.provenance[name] = provenance

    # -- image --------------------------------------------------------------------------------------
    def pil(self, mode: str = "RGB"):
        """Decode the image (PIL), converted to ``mode``; raises RecordError naming the key if it can't."""
        from PIL import Image, ImageOps

        if self.image is None:
            raise RecordError(f"record {self.key!r} has no image" + (f" ({self.error})" if self.error else ""))
        try:
            img = Image.open(io.BytesIO(self.image))
            img = ImageOps.exif_transpose(img)
            return img.convert(mode) if mode else img
        except Exception as e:  # PIL raises many types for bad bytes
            raise RecordError(f"record {self.key!r}: image cannot be decoded: {type(e).__name__}: {e}") from e

    # -- serialisation --------------------------------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        """The JSON form stored beside the image (see the module docstring)."""
        return {"key": self.key, "captions": dict(self.captions),
                "provenance": {k: p.to_dict() for k, p in self.provenance.items()},
                "meta": dict(self.meta), "error": self.error}

    @classmethod
    def from_json_dict(cls, d: dict[str, Any], image: bytes | None = None, image_ext: str = "png",
                       key: str | None = None, source: str = "") -> Record:
        """Build from the JSON form. Unknown top-level fields (e.g. img2dataset's) are kept in ``meta``."""
        where = f" in {source}" if source else ""
        if not isinstance(d, dict):
            raise RecordError(f"record metadata{where} must be a JSON object, got {type(d).__name__}")
        known = {"key", "captions", "provenance", "meta", "error"}
        meta = dict(d.get("meta") or {})
        for k, v in d.items():
            if k not in known:
                meta.setdefault(k, v)
        captions = d.get("captions") or {}
        if not isinstance(captions, dict) or not all(isinstance(v, str) for v in captions.values()):
            raise RecordError(f"'captions'{where} must map names to strings, got {captions!r}")
        prov = {k: Provenance.from_dict(v) for k, v in (d.get("provenance") or {}).items()}
        k = key if key is not None else d.get("key")
        if k is None:
            raise RecordError(f"record{where} has no key")
        return cls(key=str(k), image=image, image_ext=image_ext, captions=dict(captions), provenance=prov,
                   meta=meta, error=d.get("error"))


def normalize_ext(ext: str) -> str:
    """'.JPEG' -> 'jpg'; the extension used for files and WebDataset members."""
    e = ext.lower().lstrip(".")
    return {"jpeg": "jpg", "tif": "tiff"}.get(e, e)


def sniff_ext(data: bytes) -> str:
    """Guess an image extension from magic bytes (png/jpg/webp/gif/bmp/tiff), 'bin' if unknown."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data.startswith(b"BM"):
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return "bin"


def encode_png(img: Any, compress_level: int = 1) -> bytes:
    """Encode a PIL image as PNG bytes (fast compression by default: world data is written often)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
