"""Image-text data for training the world CLIP and the clip-prefix captioner.

Images are decoded once into a ``uint8`` tensor ``(N, 3, S, S)`` (resized on the shortest edge and
centre-cropped, as ``CLIPImageProcessor`` does) and normalised on the fly, so a 20k-image world dataset
costs 250 MB, not 1 GB of floats. Texts come from a named caption field; ``truth.<mode>`` reads the world's
true caption through :func:`recaption.world.truth_caption` (for measuring instruments only). Any other
field reads ``record.captions`` and never touches ``record.meta``: that is how the system under test is
kept away from the world's truth.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from recaption.records import Record, RecordError

log = logging.getLogger(__name__)

TRUTH_PREFIX = "truth."
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def iter_records(data: str | Iterable[Record]) -> Iterator[Record]:
    """Records from a dataset spec (any format :mod:`recaption.io` reads) or an iterable of records."""
    if isinstance(data, str):
        from recaption.io import read_records

        yield from read_records(data)
    else:
        yield from data


def caption_text(record: Record, field: str) -> str:
    """The text of ``field`` for ``record``: a caption name, or ``truth.short|truth.descriptive``."""
    if field.startswith(TRUTH_PREFIX):
        from recaption.world import truth_caption

        return truth_caption(record, field[len(TRUTH_PREFIX):])
    try:
        return record.captions[field]
    except KeyError:
        raise RecordError(f"record {record.key!r} has no caption {field!r} "
                          f"(has: {', '.join(record.captions) or 'none'})") from None


def to_pixels(img: Any, size: int) -> Any:
    """An RGB PIL image -> ``uint8`` array ``(3, size, size)``: shortest edge to ``size``, centre crop."""
    import numpy as np
    from PIL import Image

    w, h = img.size
    if (w, h) != (size, size):
        s = size / min(w, h)
        img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)


def normalize(pixels: Any, mean: tuple = CLIP_MEAN, std: tuple = CLIP_STD) -> Any:
    """``uint8 (B,3,S,S)`` -> float ``(B,3,S,S)``, rescaled to [0,1] then normalised like CLIP's processor."""
    import torch

    m = torch.tensor(mean, device=pixels.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - m) / s


def load_pixels(records: list[Record], size: int) -> Any:
    """``uint8`` tensor ``(N, 3, size, size)`` of the records' images."""
    import numpy as np
    import torch

    if not records:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return torch.from_numpy(np.stack([to_pixels(r.pil(), size) for r in records]))


def stable_fraction(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by (key, seed): subsets chosen by it do not depend on reading order."""
    h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def choose_subset(keys: list[str], size: int, seed: int) -> list[str]:
    """Exactly ``size`` keys (or all, if fewer), chosen by a seeded hash: the same keys on every run."""
    return sorted(keys, key=lambda k: stable_fraction(k, seed))[:size]


def resolve_size(size: float | int | str, total: int) -> int:
    """``"0.05"`` / ``0.05`` (a fraction of ``total``) or ``"800"`` / ``800`` (a count) -> a count."""
    v = float(size)
    if v < 0:
        raise ValueError(f"size must be >= 0, got {size!r}")
    n = int(round(v * total)) if v < 1 or (isinstance(size, str) and "." in size and v <= 1) else int(v)
    return min(n, total)
