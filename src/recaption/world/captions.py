"""Caption writers from the scene graph: simulated alt-text, and the true short and descriptive captions.

- :func:`alt_text` imitates what a person writes under a picture: short, about the main subject, often
  missing details, sometimes unrelated, with human casing and punctuation. Its rates are the fields of
  :class:`AltTextConfig`; every kind of detail has a non-zero rate, so a model trained on alt-text can learn
  it in principle (otherwise the paper's comparison would be won by construction).
- :func:`short_caption` (SSC truth): the main subjects only — every (colour, shape) group with its count.
- :func:`descriptive_caption` (DSC truth): everything — background and ground, every object's size, fill,
  colour, shape and position, counts, relations between neighbouring objects, and the sign's text.

All writers are deterministic given a ``random.Random``; several templates vary the phrasing.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from recaption.world.scene import POSITION_PHRASES, Obj, Scene, relation_holds

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
                9: "nine"}
FILL_WORDS = {"solid": ("solid", "filled", "solid"), "striped": ("striped", "striped", "stripy"),
              "dotted": ("dotted", "polka-dot", "spotted"), "outline": ("outlined", "hollow", "outline")}
"""Words for each fill (the first is canonical; captions pick among them)."""
GROUND_PHRASES = {"grass": ("a strip of green grass along the bottom", "grassy ground at the bottom",
                            "a band of grass at the bottom"),
                  "sand": ("a strip of sand along the bottom", "sandy ground at the bottom",
                           "a band of sand at the bottom")}

UNRELATED_TEXTS = (
    "new logo idea!!", "my art lol", "IMG_{n}.png", "wallpaper", "untitled", "abstract design #{n}",
    "work in progress", "dont steal", "for sale - dm me", "happy monday!", "screenshot {n}", "test upload",
    "made this today", "final_final_v{n}", "inspo", "mood", "desktop background", "sticker pack preview",
    "day {n} of daily art challenge", "thumbnail", "cover art draft", "photo", "image", "pic",
)
"""Alt-texts that say nothing about the picture ({n} becomes a number)."""
GENERIC_SUBJECTS = ("shapes", "geometric shapes", "abstract art", "geometric pattern", "simple shapes",
                    "minimalist art", "clipart")
PREFIXES = ("", "", "", "", "my ", "simple ", "cute ", "drawing of ", "clipart ", "minimal ", "vector ",
            "stock image - ", "logo: ", "art: ", "flat ")
SUFFIXES = (" #art #design", " | free vector", " by me", " lol", " (wip)", " - free download", " :)",
            " #shapes", " 2024", " hd")
ENDINGS = ("", "", "", ".", ".", "!", "!!", "...", " :)")


@dataclass(frozen=True)
class AltTextConfig:
    """Rates of the alt-text simulator (each a probability per caption).

    - ``p_unrelated`` (0.12): the whole alt-text is unrelated to the picture ("new logo idea!!").
    - ``p_generic`` (0.08): a related but generic subject ("geometric shapes") with no details.
    Otherwise the alt-text names the main subject's shape (the largest group, else the largest object) and:
    - ``p_color`` (0.45): its colour; ``p_count`` (0.5): its count when there are several (else a plural);
    - ``p_size`` (0.12): its size; ``p_fill`` (0.12): its fill texture;
    - ``p_position`` (0.12): where it is ("in the top left") or, if a second subject is named, a relation;
    - ``p_second`` (0.3): a second subject (shape, with colour at ``p_color``);
    - ``p_background`` (0.12): the background colour (and the ground band, if any, half of those times);
    - ``p_text`` (0.35): the sign's text when there is a sign ("sign that says SUN");
    - ``p_suffix`` (0.15): a hashtag or note ("#art #design"); ``p_prefix`` (0.4): a prefix ("my ", "clipart ");
    - ``p_typo`` (0.03): one swapped pair of letters;
    - casing: ``p_lower`` (0.4) all lower case, ``p_upper`` (0.05) all upper case, else as written
      (sentence case half of those times).
    """

    p_unrelated: float = 0.12
    p_generic: float = 0.08
    p_color: float = 0.45
    p_count: float = 0.5
    p_size: float = 0.12
    p_fill: float = 0.12
    p_position: float = 0.12
    p_second: float = 0.3
    p_background: float = 0.12
    p_text: float = 0.35
    p_suffix: float = 0.15
    p_prefix: float = 0.4
    p_typo: float = 0.03
    p_lower: float = 0.4
    p_upper: float = 0.05

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"AltTextConfig.{k} must be a probability in [0, 1], got {v}")


# -- helpers -----------------------------------------------------------------------------------------------
def number(n: int, article: bool = True) -> str:
    """'a' / 'one' for 1 (``article``), else the number word."""
    return ("a" if article else "one") if n == 1 else NUMBER_WORDS.get(n, str(n))


def plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "es" if shape.endswith("x") else shape + "s"


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def join_list(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def color_groups(scene: Scene) -> list[tuple[str, str, int]]:
    """(colour, shape, count) groups, biggest group first, then in reading order."""
    order: dict[tuple[str, str], int] = {}
    for o in scene.objects:
        order.setdefault((o.color, o.shape), len(order))
    counts = scene.counts()
    return sorted(((c, s, n) for (c, s), n in counts.items()), key=lambda g: (-g[2], order[(g[0], g[1])]))


def kind_groups(scene: Scene) -> list[list[Obj]]:
    """Groups of identical objects (same shape, colour, size, fill), in reading order of their first member."""
    groups: dict[tuple, list[Obj]] = {}
    for o in scene.objects:
        groups.setdefault(o.kind(), []).append(o)
    return list(groups.values())


def _np(o: Obj, rng: random.Random, n: int = 1, with_count: bool = True) -> str:
    """Full noun phrase: '[a] large striped red circle[s]'."""
    fill = rng.choice(FILL_WORDS[o.fill])
    words = [o.size, fill, o.color, plural(o.shape, n)]
    if rng.random() < 0.3:  # vary adjective order a little
        words = [o.size, o.color, fill, plural(o.shape, n)]
    phrase = " ".join(words)
    if not with_count:
        return phrase
    return (article(phrase) if n == 1 else number(n)) + " " + phrase


def _pos(position: str, rng: random.Random) -> str:
    return rng.choice(POSITION_PHRASES[position])


# -- true captions -----------------------------------------------------------------------------------------
def short_caption(scene: Scene, rng: random.Random) -> str:
    """The main subjects only: each (colour, shape) group with its count, and the sign if any."""
    items = [f"{article(c) if n == 1 else number(n)} {c} {plural(s, n)}" for c, s, n in color_groups(scene)]
    if scene.sign is not None:
        items.append("a sign")
    if not items:
        return rng.choice(("An empty scene.", "A plain background with nothing on it."))
    body = join_list(items)
    template = rng.choice(("{B}.", "{B}.", "An image of {b}.", "A picture of {b}.", "{B}, nothing else.",
                           "A simple drawing of {b}."))
    return template.format(b=body, B=_cap(body))


def _background_sentence(scene: Scene, rng: random.Random) -> str:
    bg = scene.background
    ground = "" if scene.ground == "none" else " with " + rng.choice(GROUND_PHRASES[scene.ground])
    return rng.choice((f"The background is {bg}{ground}.", f"It is set on a plain {bg} background{ground}.",
                       f"Everything sits on a {bg} background{ground}."))


def _relation_sentence(a: Obj, b: Obj, rng: random.Random) -> str | None:
    rels = [r for r in ("left of", "right of", "above", "below") if relation_holds(a, r, b)]
    if not rels:
        return None
    rel = rng.choice(rels)
    word = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}[rel]
    an, bn = f"{a.color} {a.shape}", f"{b.color} {b.shape}"
    if an == bn:
        an, bn = f"{a.color} {a.shape} {_pos(a.position, rng)}", f"the one {_pos(b.position, rng)}"
    else:
        bn = f"the {bn}"
    return rng.choice((f"The {an} is {word} {bn}.", f"The {an} sits {word} {bn}."))


def descriptive_caption(scene: Scene, rng: random.Random) -> str:
    """Everything in the scene: background, every object's attributes and position, counts, relations, text."""
    n = len(scene.objects)
    parts: list[str] = []
    lead_bg = rng.random() < 0.5
    if lead_bg:
        parts.append(_background_sentence(scene, rng))
    if n == 0:
        parts.append("There are no shapes in the picture.")
    else:
        noun = "shape" if n == 1 else "shapes"
        parts.append(rng.choice((f"There {'is' if n == 1 else 'are'} {number(n, article=False)} {noun} in total.",
                                 f"The image shows {number(n, article=False)} {noun}.",
                                 f"{_cap(number(n, article=False))} {noun} in all.")))
    for group in kind_groups(scene):
        k = len(group)
        np_ = _np(group[0], rng, k)
        where = join_list([_pos(o.position, rng) for o in group])
        if k == 1:
            s = rng.choice((f"{_cap(np_)} is {where}.", f"{_cap(where)} there is {np_}.",
                            f"There is {np_} {where}."))
        else:
            s = rng.choice((f"{_cap(np_)} are {where}.", f"There are {np_}: {where}.",
                            f"{_cap(np_)} appear, {where}."))
        parts.append(s)
    objs = list(scene.objects)
    for a, b in zip(objs, objs[1:], strict=False):
        rs = _relation_sentence(a, b, rng)
        if rs:
            parts.append(rs)
    if scene.sign is not None:
        t, where = scene.sign.text, _pos(scene.sign.position, rng)
        parts.append(rng.choice((f'A white sign {where} reads "{t}".', f'There is a sign that says "{t}" {where}.',
                                 f'{_cap(where)} a small sign shows the text "{t}".')))
    if not lead_bg:
        parts.append(_background_sentence(scene, rng))
    return " ".join(parts)


# -- alt-text ----------------------------------------------------------------------------------------------
def _main_subject(scene: Scene) -> tuple[Obj, int]:
    groups = kind_groups(scene)
    sizes = {"small": 0, "medium": 1, "large": 2}
    g = max(groups, key=lambda g: (len(g), sizes[g[0].size]))
    return g[0], len(g)


def _typo(s: str, rng: random.Random) -> str:
    idx = [i for i in range(len(s) - 1) if s[i].isalpha() and s[i + 1].isalpha()]
    if not idx:
        return s
    i = rng.choice(idx)
    return s[:i] + s[i + 1] + s[i] + s[i + 2:]


def alt_text(scene: Scene, rng: random.Random, cfg: AltTextConfig = AltTextConfig()) -> str:
    """What a person might write under the picture (see :class:`AltTextConfig` for the rates)."""
    if rng.random() < cfg.p_unrelated or (not scene.objects and scene.sign is None):
        text = rng.choice(UNRELATED_TEXTS).format(n=rng.randint(1, 9999))
    elif rng.random() < cfg.p_generic or not scene.objects:
        text = rng.choice(PREFIXES) + rng.choice(GENERIC_SUBJECTS)
        if scene.sign is not None and rng.random() < cfg.p_text:
            text += rng.choice((f" with a sign that says {scene.sign.text}", f' "{scene.sign.text}"'))
    else:
        main, k = _main_subject(scene)
        words = []
        if rng.random() < cfg.p_size:
            words.append(main.size)
        if rng.random() < cfg.p_fill:
            words.append(FILL_WORDS[main.fill][rng.randrange(3)])
        if rng.random() < cfg.p_color:
            words.append(main.color)
        if k > 1 and rng.random() < cfg.p_count:
            count = NUMBER_WORDS[k] if rng.random() < 0.7 else str(k)
            subject = " ".join([count, *words, plural(main.shape, k)])
        else:
            subject = " ".join([*words, plural(main.shape, k)])
        text = rng.choice(PREFIXES) + subject
        others = [o for o in scene.objects if o.kind() != main.kind()]
        second = rng.choice(others) if others and rng.random() < cfg.p_second else None
        if second is not None:
            sw = (second.color + " " if rng.random() < cfg.p_color else "") + second.shape
            if rng.random() < cfg.p_position and k == 1:
                rel = [r for r in ("left of", "right of", "above", "below") if relation_holds(main, r, second)]
                word = {"left of": "left of", "right of": "right of", "above": "above", "below": "under"}
                text += f" {word[rng.choice(rel)]} {article(sw)} {sw}" if rel else f" and {article(sw)} {sw}"
            else:
                text += rng.choice((" and ", " with ")) + article(sw) + " " + sw if rng.random() < 0.8 else " + " + sw
        elif rng.random() < cfg.p_position:
            text += " " + (_pos(main.position, rng) if k == 1 else "in a row")
        if rng.random() < cfg.p_background:
            text += f" on {scene.background}"
            if scene.ground != "none" and rng.random() < 0.5:
                text += f" with {scene.ground}"
            else:
                text += rng.choice((" background", " bg", ""))
        if scene.sign is not None and rng.random() < cfg.p_text:
            text += rng.choice((f" with a sign that says {scene.sign.text}", f' "{scene.sign.text}"',
                                f" ({scene.sign.text.lower()} sign)"))
    if rng.random() < cfg.p_suffix:
        text += rng.choice(SUFFIXES)
    if rng.random() < cfg.p_typo:
        text = _typo(text, rng)
    r = rng.random()
    if r < cfg.p_lower:
        text = text.lower()
    elif r < cfg.p_lower + cfg.p_upper:
        text = text.upper()
    elif rng.random() < 0.5:
        text = _cap(text)
    return text + rng.choice(ENDINGS)


DETAIL_KINDS = ("color", "count", "position", "size", "fill", "background", "text")
_POSITION_WORDS = ("top", "bottom", "left", "right", "center", "middle", "corner", "above", "under", "below",
                   "upper", "lower", "in a row")


def detail_kinds(text: str, scene: Scene) -> set[str]:
    """Which kinds of true detail (DETAIL_KINDS) a caption mentions about ``scene`` (word matching)."""
    import re

    low = text.lower()
    words = set(re.findall(r"[a-z0-9-]+", low))
    # colour words of the background ("light blue") do not count as object colours
    color_words = set(re.findall(r"[a-z0-9-]+", low.replace(scene.background, " ")))
    kinds = set()
    if any(o.color in color_words for o in scene.objects):
        kinds.add("color")
    counts = {n for n in scene.counts().values() if n > 1} | {len(g) for g in kind_groups(scene) if len(g) > 1}
    if any(NUMBER_WORDS[n] in words or str(n) in words for n in counts):
        kinds.add("count")
    if any(re.search(rf"\b{w}\b", low) for w in _POSITION_WORDS):
        kinds.add("position")
    if any(o.size in words for o in scene.objects):
        kinds.add("size")
    if any(w in words for o in scene.objects for w in FILL_WORDS[o.fill]):
        kinds.add("fill")
    bg = scene.background
    if f"on {bg}" in low or f"{bg} background" in low or f"background is {bg}" in low or f"{bg} bg" in low:
        kinds.add("background")
    if scene.sign is not None and scene.sign.text.lower() in words:
        kinds.add("text")
    return kinds
