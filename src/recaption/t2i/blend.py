"""Caption blending (Betker et al., 2023, section 3.4): at every draw, each sample gets a synthetic caption
with a fixed probability, else its original caption; separately, the caption is dropped to the empty
string with the classifier-free-guidance rate (Ho & Salimans, 2022).

Draws are counter-based: the random numbers for micro-step ``step`` on process ``rank`` come from
``numpy.random.default_rng([seed, step, rank])``, so they depend only on the seed and the step, and a
resumed run reproduces them without replaying anything. The counts of what was drawn (and of synthetic
captions missing from a record, which fall back to the original) are kept, logged and checkpointed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recaption.records import ORIGINAL

log = logging.getLogger(__name__)

EMPTY = ""
_TAG = 0x5EED_B1E4  # separates the blend's stream from other counter-based streams keyed on the same seed


class BlendSpecError(ValueError):
    """A blend specification cannot be parsed or its probabilities do not sum to 1."""


@dataclass(frozen=True)
class BlendSpec:
    """Probabilities over caption fields (summing to 1), the CFG dropout rate and the fallback field."""

    fields: tuple[str, ...]
    probs: tuple[float, ...]
    cfg_dropout: float = 0.1
    fallback: str = ORIGINAL

    def __post_init__(self) -> None:
        if len(self.fields) != len(self.probs) or not self.fields:
            raise BlendSpecError(f"blend needs one probability per field, got {self.fields} / {self.probs}")
        if len(set(self.fields)) != len(self.fields):
            raise BlendSpecError(f"blend names a caption field twice: {self.fields}")
        if any(not (0.0 <= p <= 1.0) for p in self.probs):
            raise BlendSpecError(f"blend probabilities must lie in [0, 1], got {dict(zip(self.fields, self.probs, strict=True))}")
        if abs(sum(self.probs) - 1.0) > 1e-6:
            raise BlendSpecError(f"blend probabilities must sum to 1, got {sum(self.probs):.6g} "
                                 f"for {self.describe()!r}")
        if not 0.0 <= self.cfg_dropout < 1.0:
            raise BlendSpecError(f"cfg dropout must lie in [0, 1), got {self.cfg_dropout}")

    @classmethod
    def parse(cls, text: str, cfg_dropout: float = 0.1, fallback: str = ORIGINAL) -> BlendSpec:
        """Parse ``"descriptive=0.95,alt=0.05"`` (a lone field name means probability 1)."""
        fields, probs = [], []
        for part in (p.strip() for p in str(text).split(",")):
            if not part:
                continue
            name, eq, value = part.partition("=")
            name = name.strip()
            if not name:
                raise BlendSpecError(f"blend {text!r}: empty field name in {part!r}")
            try:
                prob = float(value) if eq else 1.0
            except ValueError:
                raise BlendSpecError(f"blend {text!r}: {value!r} is not a probability (in {part!r})") from None
            fields.append(name)
            probs.append(prob)
        if not fields:
            raise BlendSpecError(f"blend {text!r} names no caption field; write e.g. 'descriptive=0.95,alt=0.05'")
        return cls(tuple(fields), tuple(probs), cfg_dropout=cfg_dropout, fallback=fallback)

    def describe(self) -> str:
        return ",".join(f"{f}={p:g}" for f, p in zip(self.fields, self.probs, strict=True))

    @property
    def columns(self) -> tuple[str, ...]:
        """The caption fields a table must provide: the blend's fields, then the fallback."""
        return self.fields + (self.fallback,)


@dataclass
class BlendDraw:
    """One micro-batch of raw draws: the index into ``spec.fields`` and whether CFG dropped the caption."""

    field: np.ndarray  # (n,) int
    dropped: np.ndarray  # (n,) bool


class CaptionBlender:
    """Draws which caption each sample trains on; deterministic in (seed, step, rank); counts what it drew."""

    def __init__(self, spec: BlendSpec, seed: int):
        self.spec = spec
        self.seed = int(seed)
        self._cum = np.cumsum(np.asarray(spec.probs, dtype=np.float64))
        self._cum[-1] = 1.0 + 1e-12  # guard against round-off at the top
        self.counts: dict[str, int] = {}
        self.reset_counts()

    def reset_counts(self) -> None:
        self.counts = {"total": 0, "dropped": 0, "fallback": 0, "missing": 0,
                       **{f"drawn/{f}": 0 for f in self.spec.fields}}

    # -- pure draws --------------------------------------------------------------------------------------
    def draw(self, step: int, n: int, rank: int = 0) -> BlendDraw:
        """The raw draws for ``n`` samples at micro-step ``step`` on process ``rank`` (no counting)."""
        rng = np.random.default_rng([self.seed, _TAG, int(step), int(rank)])
        u = rng.random((2, n))
        field_idx = np.searchsorted(self._cum, u[0], side="right")
        return BlendDraw(field=field_idx, dropped=u[1] < self.spec.cfg_dropout)

    # -- resolved draws, counted ------------------------------------------------------------------------
    def choose_ids(self, table: np.ndarray, step: int, rank: int = 0, empty_id: int = 0) -> np.ndarray:
        """Caption ids for a batch, given ``table`` (n, len(spec.columns)) of ids, -1 where missing.

        A drawn field missing for a record falls back to the last column (the original caption); if
        that is missing too, the empty caption ``empty_id`` is used. CFG dropout gives ``empty_id``.
        """
        n = table.shape[0]
        d = self.draw(step, n, rank)
        ids = table[np.arange(n), d.field]
        missing = ids < 0
        ids = np.where(missing, table[:, -1], ids)
        still = ids < 0
        ids = np.where(still | d.dropped, empty_id, ids)
        self._count(d, int(missing.sum()), int(still.sum()))
        return ids

    def choose(self, captions: Sequence[Mapping[str, str]], step: int, rank: int = 0) -> list[str]:
        """Caption strings for a batch of caption dicts (the same rules as :meth:`choose_ids`)."""
        d = self.draw(step, len(captions), rank)
        out, n_missing, n_still = [], 0, 0
        for caps, fi, drop in zip(captions, d.field, d.dropped, strict=True):
            text = caps.get(self.spec.fields[fi])
            if text is None:
                n_missing += 1
                text = caps.get(self.spec.fallback)
                if text is None:
                    n_still += 1
                    text = EMPTY
            out.append(EMPTY if drop else text)
        self._count(d, n_missing, n_still)
        return out

    def _count(self, d: BlendDraw, n_missing: int, n_still: int) -> None:
        c = self.counts
        c["total"] += len(d.field)
        c["dropped"] += int(d.dropped.sum())
        c["fallback"] += n_missing
        c["missing"] += n_still
        for i, f in enumerate(self.spec.fields):
            c[f"drawn/{f}"] += int((d.field == i).sum())

    # -- reporting and state ----------------------------------------------------------------------------
    def rates(self) -> dict[str, float]:
        """Shares of all draws so far: per field drawn, dropped (CFG), fallback, missing."""
        total = max(self.counts["total"], 1)
        return {k: v / total for k, v in self.counts.items() if k != "total"}

    def state_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.describe(), "seed": self.seed, "counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("spec") != self.spec.describe() or int(state.get("seed", -1)) != self.seed:
            raise BlendSpecError(f"checkpoint blend {state.get('spec')!r} seed {state.get('seed')} does not match "
                                 f"this run's {self.spec.describe()!r} seed {self.seed}")
        self.counts = {k: int(v) for k, v in state["counts"].items()}
