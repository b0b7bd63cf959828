"""Shares with bootstrap intervals, and the rounding used in reports.

Benchmarks here score several images per prompt (DrawBench: 4). The images of one prompt are not independent,
so the bootstrap resamples *prompts* with replacement and recomputes the share over all images of the drawn
prompts (a cluster bootstrap). Seeded, so a report can be reproduced exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import numpy as np


@dataclass(frozen=True)
class Share:
    """``correct`` of ``total`` images (``prompts`` prompts), with a bootstrap 95% interval, all in percent."""

    correct: int
    total: int
    prompts: int
    percent: float
    lo: float
    hi: float

    def to_dict(self) -> dict:
        return {"correct": self.correct, "total": self.total, "prompts": self.prompts,
                "percent": self.percent, "ci95": [self.lo, self.hi]}


def round_half_up(x: float, digits: int = 1) -> float:
    """Round halves up as people do (70.375 -> 70.4, 0.25 -> 0.3); Python's round() rounds halves to even."""
    q = Decimal(1).scaleb(-digits)
    return float(Decimal(repr(float(x))).quantize(q, rounding=ROUND_HALF_UP))


def fmt_pct(x: float, digits: int = 1) -> str:
    """A percentage as text, rounded half up."""
    return f"{round_half_up(x, digits):.{digits}f}"


def bootstrap_share(per_prompt: Sequence[Sequence[bool]], n_boot: int = 1000, seed: int = 0,
                    alpha: float = 0.05) -> Share:
    """Share correct over all images, with a percentile bootstrap interval from resampling prompts.

    ``per_prompt[i]`` holds the verdicts of the images of prompt ``i`` (any number per prompt).
    """
    correct = np.array([sum(bool(v) for v in p) for p in per_prompt], dtype=np.int64)
    counts = np.array([len(p) for p in per_prompt], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return Share(0, 0, len(per_prompt), float("nan"), float("nan"), float("nan"))
    pct = 100.0 * float(correct.sum()) / total
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_prompt), size=(n_boot, len(per_prompt)))  # (B, P)
    boot = 100.0 * correct[idx].sum(1) / np.maximum(counts[idx].sum(1), 1)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return Share(int(correct.sum()), total, len(per_prompt), pct, float(lo), float(hi))


def bootstrap_mean(values: Sequence[float], n_boot: int = 1000, seed: int = 0,
                   alpha: float = 0.05) -> tuple[float, float, float]:
    """Mean with a percentile bootstrap interval: ``(mean, lo, hi)``."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boot = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(v.mean()), float(lo), float(hi)
