"""Captioners behind one protocol: ``caption(images, mode) -> list[str]``.

``mode`` is ``"short"`` (SSC) or ``"descriptive"`` (DSC). Implementations: the clip-prefix captioner
(ours, trainable), transformers vision-language models, OpenAI-compatible chat endpoints.
"""

from recaption.captioners.base import MODES, Captioner, CaptionerError

__all__ = ["MODES", "Captioner", "CaptionerError"]
