"""The world's prompt suite (DrawBench in spirit), its constraint language, and scene samplers for it.

Every prompt carries machine-checkable constraints, JSON objects of these types::

    {"type": "exists", "shape": "circle", "color": "red", ...}   # some object has all these attributes
    {"type": "count", "shape": "star", "color": "yellow", "n": 3} # exactly n objects have them
    {"type": "relation", "a": {...}, "rel": "left of", "b": {...}} # some a is <rel> some other b
    {"type": "text", "text": "SUN"}                              # the sign reads exactly this
    {"type": "background", "color": "white"}                     # the background colour
    {"type": "ground", "ground": "grass"}                        # the ground band ('none' for no band)

Object attributes are any of shape, color, size, fill, position (a position name such as "top left").

Categories: ``colors`` (attribute binding), ``counting``, ``positional``, ``text``, ``unusual`` (colour +
shape pairs in HELD_OUT_COMBOS, which the training sampler never draws), ``property`` (shapes described by
their properties, "the shape with three corners"), ``misspelling`` and ``long`` (descriptive prompts).
The validation split (for choosing guidance and checkpoints) and the test split have disjoint prompts: no
two prompts share a text or a constraint set.

:func:`scene_for` builds a scene satisfying a prompt; :func:`scene_breaking` one that breaks exactly one of
its constraints (for checking the judge).
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from typing import Any

from recaption.world.captions import FILL_WORDS, article, descriptive_caption, number, plural
from recaption.world.sampler import jitter, sample_text
from recaption.world.scene import (
    BACKGROUNDS,
    CELL_NAMES,
    COLORS,
    FILLS,
    GROUNDS,
    HELD_OUT_COMBOS,
    POSITION_PHRASES,
    POSITIONS,
    RELATIONS,
    SHAPE_PROPERTIES,
    SHAPES,
    SIZES,
    TEXT_WORDS,
    Obj,
    Scene,
    SceneError,
    Sign,
    relation_holds,
)

CATEGORIES = ("colors", "counting", "positional", "text", "unusual", "property", "misspelling", "long")
SPLITS = ("val", "test")
SPLIT_SIZES = {"val": 15, "test": 40}
"""Prompts per category in each split (the test split has 320 prompts, validation 120)."""
SUITE_SEED = 2023
ATTRS = ("shape", "color", "size", "fill", "position")
CONSTRAINT_TYPES = ("exists", "count", "relation", "text", "background", "ground")

MISSPELLINGS = {
    "red": ("rde", "redd"), "orange": ("ornage", "orang"), "yellow": ("yelow", "yellwo"),
    "green": ("gren", "grean"), "blue": ("bleu", "blu"), "purple": ("purpel", "pruple"),
    "pink": ("pnik", "pinck"), "brown": ("broun", "brwon"), "circle": ("cirlce", "circel"),
    "square": ("sqaure", "squre"), "triangle": ("trinagle", "triangel"), "star": ("satr", "starr"),
    "hexagon": ("hexagn", "hexgon"), "diamond": ("diamnod", "dimond"), "circles": ("cirlces", "circels"),
    "squares": ("sqaures", "squres"), "triangles": ("trinagles", "triangels"), "stars": ("satrs", "starss"),
    "hexagons": ("hexagns", "hexgons"), "diamonds": ("diamnods", "dimonds"), "left": ("lfet", "letf"),
    "right": ("rigth", "rihgt"), "above": ("abvoe", "abov"), "below": ("bellow", "blow"),
    "three": ("thre", "threee"), "two": ("tow", "twoo"), "four": ("foru", "fuor"),
}


class PromptError(ValueError):
    """A prompt or constraint is malformed; the message names it."""


@dataclass(frozen=True)
class Prompt:
    """One prompt: id, split, category, text and its constraints (JSON objects, see the module docstring)."""

    id: str
    split: str
    category: str
    text: str
    constraints: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "split": self.split, "category": self.category, "text": self.text,
                "constraints": [dict(c) for c in self.constraints]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Prompt:
        try:
            p = cls(id=str(d["id"]), split=str(d.get("split", "")), category=str(d.get("category", "")),
                    text=str(d["text"]), constraints=tuple(d["constraints"]))
        except (KeyError, TypeError) as e:
            raise PromptError(f"prompt {d!r} needs id, text and constraints") from e
        for c in p.constraints:
            validate_constraint(c)
        return p


# -- the constraint language -------------------------------------------------------------------------------
def _check_attrs(attrs: dict[str, Any], where: str) -> None:
    allowed = {"shape": SHAPES, "color": COLORS, "size": SIZES, "fill": FILLS, "position": POSITIONS}
    for k, v in attrs.items():
        if k not in allowed:
            raise PromptError(f"{where}: unknown attribute {k!r}; expected one of {list(allowed)}")
        if v not in allowed[k]:
            raise PromptError(f"{where}: unknown {k} {v!r}")


def validate_constraint(c: dict[str, Any]) -> None:
    """Raise PromptError naming the problem if ``c`` is not a well-formed constraint."""
    t = c.get("type") if isinstance(c, dict) else None
    if t not in CONSTRAINT_TYPES:
        raise PromptError(f"constraint {c!r}: type must be one of {CONSTRAINT_TYPES}")
    if t in ("exists", "count"):
        _check_attrs({k: v for k, v in c.items() if k not in ("type", "n")}, f"constraint {c!r}")
        if t == "count" and not (isinstance(c.get("n"), int) and c["n"] >= 0):
            raise PromptError(f"constraint {c!r}: count needs an integer n >= 0")
    elif t == "relation":
        if c.get("rel") not in RELATIONS:
            raise PromptError(f"constraint {c!r}: rel must be one of {RELATIONS}")
        for k in ("a", "b"):
            if not isinstance(c.get(k), dict):
                raise PromptError(f"constraint {c!r}: {k} must be an object of attributes")
            _check_attrs(c[k], f"constraint {c!r}")
    elif t == "text":
        if not isinstance(c.get("text"), str):
            raise PromptError(f"constraint {c!r}: text must be a string")
    elif t == "background":
        if c.get("color") not in BACKGROUNDS:
            raise PromptError(f"constraint {c!r}: unknown background colour")
    elif t == "ground" and c.get("ground") not in GROUNDS:
        raise PromptError(f"constraint {c!r}: unknown ground")


def attrs_of(c: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in c.items() if k in ATTRS}


def matches(o: Obj, attrs: dict[str, Any]) -> bool:
    """Whether object ``o`` has every attribute in ``attrs``."""
    return all((o.position if k == "position" else getattr(o, k)) == v for k, v in attrs.items())


def describe(attrs: dict[str, Any]) -> str:
    """'large red circle at top left' for an attribute set."""
    words = [attrs[k] for k in ("size", "fill", "color") if k in attrs] + [attrs.get("shape", "object")]
    return " ".join(words) + (f" at {attrs['position']}" if "position" in attrs else "")


def _seen(scene: Scene) -> str:
    if not scene.objects:
        return "no objects"
    return ", ".join(f"{o.size} {o.fill} {o.color} {o.shape} at {o.position}" for o in scene.objects)


def check(scene: Scene, c: dict[str, Any]) -> tuple[bool, str]:
    """Evaluate one constraint on a scene: (holds, reason)."""
    t = c["type"]
    if t == "exists":
        a = attrs_of(c)
        found = [o for o in scene.objects if matches(o, a)]
        if found:
            return True, f"found {describe(a)} at {found[0].position}"
        return False, f"no {describe(a)}; saw {_seen(scene)}"
    if t == "count":
        a = attrs_of(c)
        k = sum(matches(o, a) for o in scene.objects)
        return k == c["n"], f"{k} x {describe(a)}, expected {c['n']}"
    if t == "relation":
        As = [o for o in scene.objects if matches(o, c["a"])]
        Bs = [o for o in scene.objects if matches(o, c["b"])]
        for x in As:
            for y in Bs:
                if x is not y and relation_holds(x, c["rel"], y):
                    return True, f"{describe(c['a'])} at {x.position} is {c['rel']} {describe(c['b'])} at {y.position}"
        if not As or not Bs:
            missing = describe(c["a"]) if not As else describe(c["b"])
            return False, f"no {missing}, so no {c['rel']} relation; saw {_seen(scene)}"
        return False, (f"no {describe(c['a'])} is {c['rel']} a {describe(c['b'])}: a at "
                       f"{[x.position for x in As]}, b at {[y.position for y in Bs]}")
    if t == "text":
        got = scene.text
        if got == c["text"]:
            return True, f'sign reads "{got}"'
        return False, f'sign reads "{got}", expected "{c["text"]}"' if got else f'no sign, expected "{c["text"]}"'
    if t == "background":
        return scene.background == c["color"], f"background is {scene.background}, expected {c['color']}"
    if t == "ground":
        return scene.ground == c["ground"], f"ground is {scene.ground}, expected {c['ground']}"
    raise PromptError(f"unknown constraint type {t!r}")


def check_all(scene: Scene, constraints: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> list[bool]:
    return [check(scene, c)[0] for c in constraints]


# -- prompt writers ----------------------------------------------------------------------------------------
def _combo(rng: random.Random, held_out: bool = False, avoid: set | None = None) -> tuple[str, str]:
    pool = sorted(HELD_OUT_COMBOS) if held_out else [(c, s) for c in COLORS for s in SHAPES
                                                      if (c, s) not in HELD_OUT_COMBOS]
    pool = [p for p in pool if not avoid or (p[0] not in avoid and p[1] not in avoid)]
    return rng.choice(pool)


def _rel_words(rel: str, rng: random.Random) -> str:
    return {"left of": rng.choice(("to the left of", "left of", "on the left of")),
            "right of": rng.choice(("to the right of", "right of", "on the right of")),
            "above": rng.choice(("above", "over", "on top of")),
            "below": rng.choice(("below", "under", "beneath"))}[rel]


def _ex(**attrs: Any) -> dict[str, Any]:
    return {"type": "exists", **attrs}


def _p_colors(rng: random.Random) -> tuple[str, list[dict]]:
    c1, s1 = _combo(rng)
    c2, s2 = _combo(rng, avoid={c1, s1})
    r = rng.random()
    if r < 0.5:
        text = rng.choice((f"{article(c1)} {c1} {s1} and {article(c2)} {c2} {s2}",
                           f"{article(c1)} {c1} {s1} next to {article(c2)} {c2} {s2}",
                           f"{article(c1)} {c1} {s1} with {article(c2)} {c2} {s2}"))
        return text, [_ex(shape=s1, color=c1), _ex(shape=s2, color=c2)]
    if r < 0.75:
        f, sz = rng.choice(FILLS), rng.choice(list(SIZES))
        w = FILL_WORDS[f][0]
        return f"{article(sz)} {sz} {w} {c1} {s1}", [_ex(shape=s1, color=c1, size=sz, fill=f)]
    bg = rng.choice([b for b in BACKGROUNDS])
    return (f"{article(c1)} {c1} {s1} on a {bg} background",
            [_ex(shape=s1, color=c1), {"type": "background", "color": bg}])


def _p_counting(rng: random.Random) -> tuple[str, list[dict]]:
    if rng.random() < 0.6:
        c, s = _combo(rng)
        n = rng.randint(1, 4)
        text = f"{number(n) if n > 1 else rng.choice(('one', 'a single', 'exactly one'))} {c} {plural(s, n)}"
        return text, [{"type": "count", "shape": s, "color": c, "n": n}]
    s1, s2 = rng.sample(SHAPES, 2)
    n1, n2 = rng.randint(1, 3), rng.randint(1, 3)
    text = f"{number(n1, article=False)} {plural(s1, n1)} and {number(n2, article=False)} {plural(s2, n2)}"
    return text, [{"type": "count", "shape": s1, "n": n1}, {"type": "count", "shape": s2, "n": n2}]


def _p_positional(rng: random.Random) -> tuple[str, list[dict]]:
    c1, s1 = _combo(rng)
    if rng.random() < 0.35:
        pos = rng.choice(list(POSITIONS))
        return (f"{article(c1)} {c1} {s1} {rng.choice(POSITION_PHRASES[pos])}",
                [_ex(shape=s1, color=c1, position=pos)])
    c2, s2 = _combo(rng, avoid={c1, s1})
    rel = rng.choice(RELATIONS)
    a, b = {"shape": s1, "color": c1}, {"shape": s2, "color": c2}
    return (f"{article(c1)} {c1} {s1} {_rel_words(rel, rng)} {article(c2)} {c2} {s2}",
            [_ex(**a), _ex(**b), {"type": "relation", "a": a, "rel": rel, "b": b}])


def _p_text(rng: random.Random) -> tuple[str, list[dict]]:
    t = sample_text(rng, p_random=0.3)
    r = rng.random()
    if r < 0.5:
        return (rng.choice((f'a sign that says "{t}"', f'a sign with the word "{t}" written on it',
                            f'a white sign reading "{t}"')), [{"type": "text", "text": t}])
    c, s = _combo(rng)
    return (f'{article(c)} {c} {s} and a sign that says "{t}"',
            [_ex(shape=s, color=c), {"type": "text", "text": t}])


def _p_unusual(rng: random.Random) -> tuple[str, list[dict]]:
    c, s = _combo(rng, held_out=True)
    r = rng.random()
    if r < 0.4:
        return f"{article(c)} {c} {s}", [_ex(shape=s, color=c)]
    if r < 0.7:
        n = rng.randint(2, 3)
        return f"{number(n)} {c} {plural(s, n)}", [{"type": "count", "shape": s, "color": c, "n": n}]
    c2, s2 = _combo(rng, avoid={c, s})
    return (f"{article(c)} {c} {s} and {article(c2)} {c2} {s2}", [_ex(shape=s, color=c), _ex(shape=s2, color=c2)])


def _p_property(rng: random.Random) -> tuple[str, list[dict]]:
    c, s = _combo(rng)
    desc = rng.choice(SHAPE_PROPERTIES[s])
    if rng.random() < 0.6:
        return rng.choice((f"a {c} {desc}", f"the {c} {desc}")), [_ex(shape=s, color=c)]
    c2, s2 = _combo(rng, avoid={c, s})
    rel = rng.choice(RELATIONS)
    a, b = {"shape": s, "color": c}, {"shape": s2, "color": c2}
    return (f"a {c} {desc} {_rel_words(rel, rng)} {article(c2)} {c2} {s2}",
            [_ex(**a), _ex(**b), {"type": "relation", "a": a, "rel": rel, "b": b}])


def _misspell(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    idx = [i for i, w in enumerate(words) if w in MISSPELLINGS]
    for i in rng.sample(idx, min(len(idx), rng.randint(1, 2))):
        words[i] = rng.choice(MISSPELLINGS[words[i]])
    return " ".join(words)


def _p_misspelling(rng: random.Random) -> tuple[str, list[dict]]:
    for _ in range(100):
        text, cons = rng.choice((_p_colors, _p_counting, _p_positional))(rng)
        bad = _misspell(text, rng)
        if bad != text:
            return bad, cons
    raise PromptError("could not misspell a prompt")


def _p_long(rng: random.Random) -> tuple[str, list[dict]]:
    objs, cells = [], rng.sample(list(CELL_NAMES), 9)
    for _ in range(rng.randint(2, 3)):
        c, s = _combo(rng)
        r, col = cells.pop()
        objs.append(Obj(s, c, rng.choice(list(SIZES)), rng.choice(FILLS), r, col))
    sign = Sign(rng.choice(TEXT_WORDS), *cells.pop()) if rng.random() < 0.3 else None
    scene = Scene(background=rng.choice(list(BACKGROUNDS)),
                  ground=rng.choice(list(GROUNDS)) if rng.random() < 0.4 else "none",
                  objects=tuple(objs), sign=sign)
    cons: list[dict] = [_ex(shape=o.shape, color=o.color, size=o.size, fill=o.fill, position=o.position)
                        for o in scene.objects]
    cons.append({"type": "count", "n": len(scene.objects)})
    cons.append({"type": "background", "color": scene.background})
    cons.append({"type": "ground", "ground": scene.ground})
    if sign:
        cons.append({"type": "text", "text": sign.text})
    return descriptive_caption(scene, rng), cons


WRITERS = {"colors": _p_colors, "counting": _p_counting, "positional": _p_positional, "text": _p_text,
           "unusual": _p_unusual, "property": _p_property, "misspelling": _p_misspelling, "long": _p_long}
"""Category -> writer(rng) -> (text, constraints)."""


@functools.lru_cache(maxsize=4)
def _suite(seed: int) -> tuple[Prompt, ...]:
    rng = random.Random(seed)
    out: list[Prompt] = []
    seen_text: set[str] = set()
    seen_cons: set[str] = set()
    for cat in CATEGORIES:
        for split in SPLITS:
            k = 0
            tries = 0
            while k < SPLIT_SIZES[split]:
                tries += 1
                if tries > 10000:
                    raise PromptError(f"could not write enough distinct {cat} prompts")
                text, cons = WRITERS[cat](rng)
                key = json.dumps(cons, sort_keys=True)
                if text in seen_text or key in seen_cons:
                    continue
                seen_text.add(text)
                seen_cons.add(key)
                out.append(Prompt(id=f"{split}-{cat}-{k:03d}", split=split, category=cat, text=text,
                                  constraints=tuple(cons)))
                k += 1
    return tuple(out)


def prompt_suite(split: str = "test", seed: int = SUITE_SEED) -> list[Prompt]:
    """The prompts of ``split`` ('val', 'test' or 'all'); fixed for a given seed."""
    if split not in (*SPLITS, "all"):
        raise PromptError(f"split must be one of {SPLITS + ('all',)}, got {split!r}")
    return [p for p in _suite(seed) if split == "all" or p.split == split]


def load_prompts(path: str) -> list[Prompt]:
    """Read prompts from a JSONL file (one :meth:`Prompt.to_dict` per line)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(Prompt.from_dict(json.loads(line)))
                except json.JSONDecodeError as e:
                    raise PromptError(f"{path}:{i}: not JSON: {e}") from e
    return out


# -- scenes for prompts ------------------------------------------------------------------------------------
def _unify(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    if any(k in a and a[k] != v for k, v in b.items()):
        return None
    return {**a, **b}


def _specs(constraints: tuple[dict, ...], rng: random.Random) -> tuple[list[dict], list[tuple[int, str, int]]]:
    """Object attribute specs needed by the constraints, and relations between spec indices."""
    specs: list[dict] = []
    rels: list[tuple[int, str, int]] = []

    def find_or_add(attrs: dict, exclude: set[int] = frozenset()) -> int:
        opts = [i for i, s in enumerate(specs) if i not in exclude and _unify(s, attrs) is not None]
        if opts and rng.random() < 0.9:
            i = rng.choice(opts)
            specs[i] = _unify(specs[i], attrs)
            return i
        specs.append(dict(attrs))
        return len(specs) - 1

    for c in constraints:
        if c["type"] == "relation":
            i = find_or_add(c["a"])
            j = find_or_add(c["b"], exclude={i})
            rels.append((i, c["rel"], j))
    for c in constraints:
        if c["type"] == "exists":
            find_or_add(attrs_of(c))
    for c in constraints:
        if c["type"] == "count":
            a = attrs_of(c)
            have = sum(_unify(s, a) is not None and all(k in s for k in a) for s in specs)
            for _ in range(c["n"] - have):
                specs.append(dict(a))
    return specs, rels


def _instantiate(spec: dict, cell: tuple[int, int], rng: random.Random, allow_held_out: bool) -> Obj:
    for _ in range(100):
        shape = spec.get("shape") or rng.choice(SHAPES)
        color = spec.get("color") or rng.choice(list(COLORS))
        if allow_held_out or (color, shape) not in HELD_OUT_COMBOS or ("shape" in spec and "color" in spec):
            break
    return Obj(shape, color, spec.get("size") or rng.choice(list(SIZES)), spec.get("fill") or rng.choice(FILLS),
               cell[0], cell[1], *jitter(rng))


def scene_for(prompt: Prompt, rng: random.Random, *, distractors: int = 1, tries: int = 500) -> Scene:
    """A random scene that satisfies every constraint of ``prompt`` (with up to ``distractors`` extra objects).

    Raises PromptError if none is found in ``tries`` attempts.
    """
    cons = prompt.constraints
    held = prompt.category == "unusual"
    for _ in range(tries):
        specs, rels = _specs(cons, rng)
        specs = specs + [{} for _ in range(rng.randint(0, distractors))]
        if len(specs) > 9:
            continue
        fixed = {i: POSITIONS[s["position"]] for i, s in enumerate(specs) if "position" in s}
        if len(set(fixed.values())) != len(fixed):
            continue
        free = [c for c in CELL_NAMES if c not in fixed.values()]
        rng.shuffle(free)
        cells = {i: fixed.get(i) or free.pop() for i in range(len(specs)) if i in fixed or free}
        if len(cells) != len(specs):
            continue
        objs = [_instantiate(s, cells[i], rng, held) for i, s in enumerate(specs)]
        text = next((c["text"] for c in cons if c["type"] == "text"), None)
        sign = None
        if text is not None:
            left = [c for c in CELL_NAMES if c not in cells.values()]
            if not left:
                continue
            try:
                sign = Sign(text, *rng.choice(left), *jitter(rng))
            except SceneError:
                raise PromptError(f"prompt {prompt.id}: text {text!r} cannot be drawn") from None
        bg = next((c["color"] for c in cons if c["type"] == "background"), None) or rng.choice(list(BACKGROUNDS))
        ground = next((c["ground"] for c in cons if c["type"] == "ground"), None) or \
            rng.choice(["none", "none", "grass", "sand"])
        scene = Scene(background=bg, ground=ground, objects=tuple(objs), sign=sign)
        if all(check_all(scene, cons)):
            return scene
    raise PromptError(f"no scene satisfies prompt {prompt.id} ({prompt.text!r}) after {tries} tries")


def _mutate(scene: Scene, rng: random.Random) -> Scene | None:
    objs = list(scene.objects)
    used = {o.cell for o in objs} | ({scene.sign.cell} if scene.sign else set())
    empty = [c for c in CELL_NAMES if c not in used]
    op = rng.choice(("attr", "attr", "attr", "move", "swap", "remove", "add", "background", "ground", "text"))

    def repl(o: Obj, **kw: Any) -> Obj:
        d = {"shape": o.shape, "color": o.color, "size": o.size, "fill": o.fill, "row": o.row, "col": o.col,
             "dx": o.dx, "dy": o.dy}
        d.update(kw)
        return Obj(**d)

    if op == "attr" and objs:
        i = rng.randrange(len(objs))
        k = rng.choice(("shape", "color", "size", "fill"))
        choices = {"shape": SHAPES, "color": list(COLORS), "size": list(SIZES), "fill": FILLS}[k]
        objs[i] = repl(objs[i], **{k: rng.choice([v for v in choices if v != getattr(objs[i], k)])})
    elif op == "move" and objs and empty:
        i = rng.randrange(len(objs))
        r, c = rng.choice(empty)
        objs[i] = repl(objs[i], row=r, col=c)
    elif op == "swap" and len(objs) >= 2:
        i, j = rng.sample(range(len(objs)), 2)
        a, b = objs[i], objs[j]
        objs[i], objs[j] = repl(a, row=b.row, col=b.col), repl(b, row=a.row, col=a.col)
    elif op == "remove" and objs:
        objs.pop(rng.randrange(len(objs)))
    elif op == "add" and empty:
        r, c = rng.choice(empty)
        objs.append(Obj(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES)), rng.choice(FILLS),
                        r, c))
    elif op == "background":
        return Scene(rng.choice([b for b in BACKGROUNDS if b != scene.background]), scene.ground, tuple(objs),
                     scene.sign)
    elif op == "ground":
        return Scene(scene.background, rng.choice([g for g in GROUNDS if g != scene.ground]), tuple(objs),
                     scene.sign)
    elif op == "text" and scene.sign is not None:
        t = list(scene.sign.text)
        i = rng.randrange(len(t))
        t[i] = rng.choice([ch for ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if ch != t[i]])
        s = scene.sign
        return Scene(scene.background, scene.ground, tuple(objs), Sign("".join(t), s.row, s.col, s.dx, s.dy))
    else:
        return None
    return Scene(scene.background, scene.ground, tuple(objs), scene.sign)


def scene_breaking(prompt: Prompt, rng: random.Random, target: int | None = None,
                   tries: int = 2000) -> tuple[Scene, int]:
    """A scene that breaks exactly one constraint of ``prompt`` (``target`` if given; else any).

    Found by mutating satisfying scenes (change an attribute, move, swap, remove or add an object, change
    the background, the ground or a letter of the sign) until exactly one constraint fails. Returns the scene
    and the index of the broken constraint; raises PromptError if none is found.
    """
    base = scene_for(prompt, rng)
    for t in range(tries):
        if t % 50 == 49:
            base = scene_for(prompt, rng)
        s = _mutate(base, rng)
        if s is None:
            continue
        if rng.random() < 0.3:
            s2 = _mutate(s, rng)
            s = s2 if s2 is not None else s
        ok = check_all(s, prompt.constraints)
        bad = [i for i, v in enumerate(ok) if not v]
        if len(bad) == 1 and (target is None or bad[0] == target):
            return s, bad[0]
    raise PromptError(f"could not break exactly one constraint of {prompt.id} (target {target})")
