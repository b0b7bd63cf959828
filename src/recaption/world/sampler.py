"""Seeded scene sampler: random scenes with groups of identical objects and sometimes a sign."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from recaption.world.scene import (
    BACKGROUNDS,
    CELL_NAMES,
    COLORS,
    FILLS,
    GROUNDS,
    HELD_OUT_COMBOS,
    SHAPES,
    SIZES,
    TEXT_ALPHABET,
    TEXT_WORDS,
    Obj,
    Scene,
    SceneError,
    Sign,
)

_COLOR_NAMES, _SIZE_NAMES, _BACKGROUND_NAMES = tuple(COLORS), tuple(SIZES), tuple(BACKGROUNDS)


@dataclass(frozen=True)
class SamplerConfig:
    """How scenes are drawn.

    ``min_objects``..``max_objects`` objects (uniform); with probability ``p_group`` the scene starts with a
    group of 2..``max_group`` identical objects (same shape, colour, size and fill: "three red circles");
    a sign with a 2-3 letter label with probability ``p_sign`` (a word from TEXT_WORDS, or random letters with
    probability ``p_random_text``); a ground band with probability ``p_ground``. (colour, shape) pairs in
    ``exclude_combos`` are never drawn (default: HELD_OUT_COMBOS, kept for the prompt suite's unusual
    category). ``jitter`` scales the placement jitter inside the cell (0 = centred).
    """

    min_objects: int = 1
    max_objects: int = 4
    p_group: float = 0.3
    max_group: int = 4
    p_sign: float = 0.2
    p_random_text: float = 0.3
    p_ground: float = 0.3
    exclude_combos: frozenset[tuple[str, str]] = field(default_factory=lambda: HELD_OUT_COMBOS)
    jitter: float = 1.0

    def __post_init__(self) -> None:
        if not (0 <= self.min_objects <= self.max_objects <= 9):
            raise SceneError(f"need 0 <= min_objects <= max_objects <= 9, got {self.min_objects}, "
                             f"{self.max_objects}")


def sample_kind(rng: random.Random, exclude: frozenset[tuple[str, str]] = HELD_OUT_COMBOS,
                color: str | None = None, shape: str | None = None) -> tuple[str, str, str, str]:
    """A random (shape, colour, size, fill), never a (colour, shape) pair in ``exclude``."""
    for _ in range(1000):
        s = shape or rng.choice(SHAPES)
        c = color or rng.choice(_COLOR_NAMES)
        if (c, s) not in exclude:
            return (s, c, rng.choice(_SIZE_NAMES), rng.choice(FILLS))
    raise SceneError(f"no (colour, shape) allowed for colour={color!r} shape={shape!r} excluding {exclude}")


def sample_text(rng: random.Random, p_random: float = 0.3) -> str:
    """A 2-3 letter label: a short word, or random letters."""
    if rng.random() < p_random:
        return "".join(rng.choice(TEXT_ALPHABET) for _ in range(rng.randint(2, 3)))
    return rng.choice(TEXT_WORDS)


def jitter(rng: random.Random, scale: float = 1.0) -> tuple[float, float]:
    return (round(rng.uniform(-1, 1) * scale, 3), round(rng.uniform(-1, 1) * scale, 3))


def sample_scene(rng: random.Random, cfg: SamplerConfig = SamplerConfig()) -> Scene:
    """Draw one scene from ``rng`` (a ``random.Random``); objects sit in distinct grid cells."""
    cells = list(CELL_NAMES)
    rng.shuffle(cells)
    sign = None
    if rng.random() < cfg.p_sign:
        r, c = cells.pop()
        sign = Sign(sample_text(rng, cfg.p_random_text), r, c, *jitter(rng, cfg.jitter))
    n = min(rng.randint(cfg.min_objects, cfg.max_objects), len(cells))
    objs: list[Obj] = []
    if n >= 2 and rng.random() < cfg.p_group:
        k = rng.randint(2, min(cfg.max_group, n))
        kind = sample_kind(rng, cfg.exclude_combos)
        for _ in range(k):
            r, c = cells.pop()
            objs.append(Obj(*kind, row=r, col=c, dx=jitter(rng, cfg.jitter)[0], dy=jitter(rng, cfg.jitter)[1]))
    while len(objs) < n:
        kind = sample_kind(rng, cfg.exclude_combos)
        r, c = cells.pop()
        objs.append(Obj(*kind, row=r, col=c, dx=jitter(rng, cfg.jitter)[0], dy=jitter(rng, cfg.jitter)[1]))
    background = rng.choice(_BACKGROUND_NAMES)
    ground = rng.choice([g for g in GROUNDS if g != "none"]) if rng.random() < cfg.p_ground else "none"
    return Scene(background=background, ground=ground, objects=tuple(objs), sign=sign)


def scene_rng(seed: int, index: int) -> random.Random:
    """The per-scene generator: scene ``index`` of seed ``seed`` is the same however the work is split."""
    if not (0 <= index < 2**32) or seed < 0:
        raise SceneError(f"need seed >= 0 and 0 <= index < 2**32, got seed={seed}, index={index}")
    return random.Random((seed << 32) | index)  # an int seeds without hashing: fast, and distinct per (seed, i)
