"""The captioner protocol shared by every captioner and by the batch recaption job."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from recaption.records import Provenance

MODES = ("short", "descriptive")


class CaptionerError(RuntimeError):
    """A captioner could not caption a batch (bad response, model error); the message says which and why."""


@runtime_checkable
class Captioner(Protocol):
    """Anything that turns a batch of RGB PIL images into one caption each, in a mode.

    ``name`` and ``version`` identify it in each caption's provenance; ``provenance(mode)`` builds that.
    Optionally ``check_mode(mode)`` raises :class:`CaptionerError` for a mode it cannot write (a checkpoint
    fine-tuned for one mode), so a job refuses before reading instead of failing every batch.
    """

    name: str
    version: str

    def caption(self, images: list[Any], mode: str) -> list[str]:
        """One caption per image, in ``mode`` (``short`` or ``descriptive``)."""
        ...

    def provenance(self, mode: str) -> Provenance:
        """The provenance stamped on captions this captioner writes in ``mode``."""
        ...


def check_mode(mode: str) -> str:
    """Validate a caption mode, naming the allowed ones."""
    if mode not in MODES:
        raise ValueError(f"caption mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode
