"""Hard negative captions for CLIP training (NegCLIP, Yuksekgonul et al. 2023): swap one attribute word.

Why: with in-batch negatives alone, a CLIP matches "a striped red circle" to its image by colour and shape,
which already tell it from the other 127 images of a batch; the word "striped" never has to be read. A
negative that differs from the true caption in that one word ("a dotted red circle") makes the contrastive
loss pay for every attribute the caption names, so the image tower must see it. In the shapes world the
alt-text names a fill for about one main subject in ten, and a CLIP trained without such negatives carries
fill at near chance (bench/RESULTS.md). Measured there, these negatives did not change that (the tower's fill
probe 0.473 with and without; "Hard negatives for the world CLIP ..."): too few alt-texts name a fill. Off by default.

Negatives are made from the caption text alone: a *word group* is a set of interchangeable classes of words
(colours; fills with their synonyms; sizes; numbers; left / right ...). For each group a caption mentions,
one negative replaces one of its words with a word of another class of that group. The world's groups come
from its vocabulary (:func:`world_word_groups`); for other data, a JSON file of groups, each a list of
classes, each a list of synonyms (or a plain word): ``[[["red"], ["blue"]], [["left"], ["right"]]]``.
"""

from __future__ import annotations

import json
import random
import re

WordGroups = tuple[tuple[tuple[str, ...], ...], ...]
"""Groups -> classes -> synonyms."""


def world_word_groups() -> WordGroups:
    """The shapes world's attribute vocabulary as word groups (colours, fills, sizes, shapes, numbers, sides)."""
    from recaption.world.captions import FILL_WORDS, NUMBER_WORDS
    from recaption.world.scene import COLORS, SHAPES, SIZES

    def singles(words: object) -> tuple[tuple[str, ...], ...]:
        return tuple((w,) for w in words)  # type: ignore[attr-defined]

    return (singles(COLORS), tuple(tuple(dict.fromkeys(ws)) for ws in FILL_WORDS.values()), singles(SIZES),
            singles(SHAPES), singles(s + ("es" if s.endswith("x") else "s") for s in SHAPES),
            singles(NUMBER_WORDS[n] for n in range(2, 10)), (("left",), ("right",)), (("top",), ("bottom",)),
            (("above",), ("below", "under")))


def load_word_groups(spec: str) -> WordGroups:
    """``"world"`` -> :func:`world_word_groups`; otherwise a JSON file as described in the module docstring."""
    if spec == "world":
        return world_word_groups()
    try:
        with open(spec) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"hard negatives {spec!r}: not 'world' and not a readable JSON file ({e})") from None
    groups = []
    for gi, g in enumerate(raw if isinstance(raw, list) else []):
        classes = tuple(tuple([c] if isinstance(c, str) else c) for c in g) if isinstance(g, list) else ()
        if len(classes) < 2 or not all(c and all(isinstance(w, str) and w.strip() for w in c) for c in classes):
            raise ValueError(f"hard negatives {spec!r}: group {gi} must list at least two classes of words, "
                             f"each a word or a list of words; got {g!r}")
        groups.append(classes)
    if not groups:
        raise ValueError(f"hard negatives {spec!r}: expected a JSON list of word groups, found none")
    return tuple(groups)


class HardNegatives:
    """Makes the swapped-word negatives of a caption (one per word group it mentions)."""

    def __init__(self, groups: WordGroups) -> None:
        self.groups = groups
        self.where: dict[str, tuple[int, int]] = {}
        for gi, classes in enumerate(groups):
            for ci, words in enumerate(classes):
                for w in words:
                    self.where.setdefault(w.lower(), (gi, ci))
        alts = sorted(self.where, key=len, reverse=True)
        self.pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in alts) + r")\b", re.IGNORECASE)

    def __call__(self, text: str, rng: random.Random) -> list[str]:
        """Negatives of ``text``: for each group it mentions, one of its words replaced by another class's."""
        by_group: dict[int, list[re.Match[str]]] = {}
        for m in self.pattern.finditer(text):
            by_group.setdefault(self.where[m.group(0).lower()][0], []).append(m)
        out = []
        for gi, found in by_group.items():
            m = rng.choice(found)
            ci = self.where[m.group(0).lower()][1]
            other = rng.choice([c for j, c in enumerate(self.groups[gi]) if j != ci])
            word = rng.choice(other)
            if m.group(0).isupper() and len(m.group(0)) > 1:
                word = word.upper()
            elif m.group(0)[:1].isupper():
                word = word[:1].upper() + word[1:]
            out.append(text[:m.start()] + word + text[m.end():])
        return out
