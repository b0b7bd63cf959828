"""Filesystem helpers shared by the formats: fsspec URLs, brace/glob expansion, atomic writes."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fsspec
from braceexpand import braceexpand

GLOB_CHARS = ("*", "?", "[")


def url_to_fs(spec: str) -> tuple[Any, str]:
    """(filesystem, path) for a local path or an fsspec URL (``memory://``, ``file://``, ``s3://``...)."""
    try:
        return fsspec.core.url_to_fs(str(spec))
    except (ValueError, ImportError) as e:  # unknown protocol, missing optional backend
        raise FileNotFoundError(f"cannot open {spec!r}: {e}") from e


def join(fs: Any, base: str, *parts: str) -> str:
    """Join path parts with '/' (fsspec paths use '/', also on local filesystems)."""
    out = base.rstrip("/")
    for p in parts:
        if p:
            out = f"{out}/{p.strip('/')}" if out else p.strip("/")
    return out


def unstrip(fs: Any, spec: str, path: str) -> str:
    """Put the protocol back on a path that fsspec stripped, so it can be passed around as a spec."""
    return fs.unstrip_protocol(path) if "://" in str(spec) else path


def expand(spec: str) -> tuple[Any, list[str]]:
    """Expand braces (``shard-{00000..00009}.tar``) and globs into existing paths, sorted.

    A spec without braces or glob characters is returned as is (existence is checked by the caller).
    """
    spec = str(spec)
    fs, _ = url_to_fs(spec)
    pieces = list(braceexpand(spec)) if "{" in spec else [spec]
    out: list[str] = []
    for piece in pieces:
        _, path = url_to_fs(piece)
        if any(c in path for c in GLOB_CHARS):
            out.extend(sorted(fs.glob(path)))
        else:
            out.append(path)
    return fs, out


def list_files(spec: str, keep: Callable[[str], bool], *, recursive: bool, what: str) -> list[str]:
    """The files a spec names (brace patterns, globs, plain paths) plus those ``keep`` accepts in the folders
    it names (``recursive``: every level below; hidden names skipped), in spec form (URL kept), sorted per
    folder. A named path that does not exist raises ``FileNotFoundError("no such WHAT: ...")``."""
    fs, paths = expand(spec)
    out: list[str] = []
    for p in paths:
        if fs.isdir(p):
            found = fs.find(p) if recursive else fs.ls(p, detail=False)
            out.extend(sorted(f for f in found if keep(f)
                              and not any(part.startswith(".") for part in f[len(p):].split("/"))))
        elif fs.exists(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"no such {what}: {unstrip(fs, spec, p)}")
    return [unstrip(fs, spec, p) for p in out]


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def stem(path: str) -> str:
    """Name without directory and without *all* extensions (webdataset's key rule: up to the first dot)."""
    return basename(path).split(".", 1)[0]


def tmp_name(fs: Any, final: str) -> str:
    """A hidden temporary path beside ``final`` (readers skip names that start with '.')."""
    parent, name = final.rsplit("/", 1) if "/" in final else ("", final)
    tmp = f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return f"{parent}/{tmp}" if parent else tmp


@contextlib.contextmanager
def atomic_open(fs: Any, final: str, mode: str = "wb") -> Iterator[Any]:
    """Write to a temporary name beside ``final`` and rename into place only if the block succeeds."""
    tmp = tmp_name(fs, final)
    try:
        with fs.open(tmp, mode) as f:
            yield f
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise
    fs.mv(tmp, final)


def makedirs(fs: Any, path: str) -> None:
    if path:
        fs.makedirs(path, exist_ok=True)
