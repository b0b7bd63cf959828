"""``recaption caption``: a plain loop that captions a dataset into a JSONL file.

One line per record: ``{"key", "caption", "mode", "provenance"}`` (``caption`` is null and ``error`` says
why for a record whose image cannot be read). The scalable, resumable job is :mod:`recaption.pipeline`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from recaption.captioners.base import check_mode
from recaption.records import Record, RecordError

log = logging.getLogger(__name__)


def caption_records(captioner: Any, records: Iterable[Record], mode: str, out: str, batch_size: int = 64,
                    limit: int | None = None) -> dict[str, Any]:
    """Caption ``records`` in ``mode`` with ``captioner`` into the JSONL file ``out``; returns counts."""
    from tqdm import tqdm

    check_mode(mode)
    prov = captioner.provenance(mode).to_dict()
    n_ok = n_err = 0
    t0 = time.time()
    with open(out, "w") as f:
        def flush(batch: list[tuple[Record, Any]]) -> None:
            nonlocal n_ok
            if not batch:
                return
            caps = captioner.caption([im for _, im in batch], mode)
            for (r, _), c in zip(batch, caps, strict=True):
                f.write(json.dumps({"key": r.key, "caption": c, "mode": mode, "provenance": prov}) + "\n")
            n_ok += len(batch)
            batch.clear()

        batch: list[tuple[Record, Any]] = []
        for i, r in enumerate(tqdm(records, desc=f"caption {mode}", unit="img", disable=None)):
            if limit is not None and i >= limit:
                break
            try:
                batch.append((r, r.pil()))
            except RecordError as e:
                n_err += 1
                f.write(json.dumps({"key": r.key, "caption": None, "mode": mode, "provenance": prov,
                                    "error": str(e)}) + "\n")
                continue
            if len(batch) >= batch_size:
                flush(batch)
        flush(batch)
    secs = time.time() - t0
    return {"captioned": n_ok, "errors": n_err, "seconds": round(secs, 2),
            "images_per_second": round(n_ok / secs, 2) if secs > 0 else None, "out": out}


def read_captions(path: str) -> dict[str, str]:
    """A captions JSONL file (``key`` + ``caption`` per line) -> {key: caption}; null captions skipped."""
    out: dict[str, str] = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                key, cap = str(d["key"]), d.get("caption")
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise RecordError(f"{path}:{n}: expected a JSON object with 'key' and 'caption' ({e})") from e
            if isinstance(cap, str):
                out[key] = cap
    return out
