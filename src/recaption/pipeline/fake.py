"""A deterministic stand-in captioner for tests, dry runs and benchmarks of the job itself.

Its caption is a function of the mode and the decoded pixels only (size and a hash), so two runs, two
engines or a killed-and-resumed run must produce identical output, whatever the batching.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from recaption.captioners.base import check_mode
from recaption.records import Provenance


class HashCaptioner:
    """``caption(images, mode)`` -> ``"<mode> <W>x<H> <md5 of the pixels>"``; ``delay`` seconds per call."""

    name = "hash"
    version = "1"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def caption(self, images: list[Any], mode: str) -> list[str]:
        check_mode(mode)
        if self.delay:
            time.sleep(self.delay)
        return [caption_of(im, mode) for im in images]

    def provenance(self, mode: str) -> Provenance:
        return Provenance.now(self.name, self.version, mode, prompt=None)


def caption_of(image: Any, mode: str) -> str:
    """The caption :class:`HashCaptioner` gives an RGB PIL image in ``mode``."""
    return f"{mode} {image.size[0]}x{image.size[1]} {hashlib.md5(image.tobytes()).hexdigest()[:10]}"
