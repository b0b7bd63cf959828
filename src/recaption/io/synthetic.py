"""Synthetic records for tests and benchmarks of the formats: random images, several captions, provenance,
nested metadata, some JPEGs and (optionally) error records without an image. Seeded, so reproducible."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator

import numpy as np
from PIL import Image

from recaption.records import Provenance, Record, encode_png

WORDS = ("red", "blue", "circle", "square", "small", "large", "left", "right", "on", "a", "the", "café", "😀")


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def synthetic_records(n: int, seed: int = 0, size: int = 16, jpeg_every: int = 5,
                      error_every: int = 0) -> Iterator[Record]:
    """``n`` records keyed ``r000000``...; every ``jpeg_every``-th image a JPEG, every ``error_every``-th
    (if > 0) an error record with no image."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    for i in range(n):
        key = f"r{i:06d}"
        if error_every and i % error_every == error_every - 1:
            yield Record(key=key, image=None, captions={"alt": _sentence(rng, 3)},
                         meta={"url": f"http://example.com/{i}.jpg"}, error="zero bytes: empty file")
            continue
        arr = nrng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        img = Image.fromarray(arr, "RGB")
        if jpeg_every and i % jpeg_every == 0:
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            data, ext = buf.getvalue(), "jpg"
        else:
            data, ext = encode_png(img), "png"
        prov = {"short": Provenance(captioner="fake", version="v1", mode="short",
                                    created="2026-11-26T06:00:00+00:00"),
                "descriptive": Provenance(captioner="fake", version="v1", mode="descriptive", prompt="describe",
                                          created="2026-11-26T06:00:01+00:00", extra={"beam": 3, "t": 0.7})}
        yield Record(key=key, image=data, image_ext=ext,
                     captions={"alt": _sentence(rng, rng.randint(0, 6)) + ("\nline two" if i % 7 == 0 else ""),
                               "short": _sentence(rng, 4), "descriptive": _sentence(rng, 20),
                               "mine": "x" * (i % 3)},
                     provenance=prov,
                     meta={"url": f"http://example.com/{i}.png", "width": size, "height": size,
                           "score": rng.random(), "flag": bool(i % 2), "none": None,
                           "world": {"scene": {"objects": [{"shape": "circle", "xy": [i % 4, 2]}]},
                                     "truth": {"short": "a circle"}},
                           "tags": ["a", "b"][: i % 3]})
