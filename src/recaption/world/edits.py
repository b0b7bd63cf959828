"""Follow-up edits of world scenes: training data and a yardstick for the upsampler's conversation semantics.

The paper's Appendix C prompt asks the upsampler to treat a follow-up request ("make the light red") as a
change to the previous description, refactored into it, and a new request as a fresh start. The world knows
the truth, so it can make that training data exactly: take a scene, pick an edit the world can express
(recolour, resize, refill, move, add or remove an object, change the background), say it as an instruction
that names its object unambiguously, apply it to the scene, and describe the scene before and after.

- :func:`sample_edit` / :func:`apply_edit` / :func:`instruction` / :func:`make_triple` / :func:`edit_triples`
  build (previous description, instruction, new description) triples with both scenes attached. The two
  descriptions are written with the same caption seed, so the new one keeps the old one's phrasing wherever
  the scene did not change: the model learns to rewrite in place, not to append.
- :func:`parse_description` reads a descriptive caption (the world's templates, or a model imitating them)
  back into a scene; :func:`edit_reflected` says whether a parsed description carries a given edit.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

from recaption.world.captions import FILL_WORDS, NUMBER_WORDS, article, descriptive_caption
from recaption.world.scene import (
    BACKGROUNDS,
    CELL_NAMES,
    COLORS,
    FILLS,
    GROUNDS,
    HELD_OUT_COMBOS,
    POSITION_PHRASES,
    POSITIONS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    SceneError,
    Sign,
)

EDIT_KINDS: tuple[str, ...] = ("color", "size", "fill", "move", "add", "remove", "background")
"""What a follow-up may change: an object's colour, size (one step), fill or cell; add or remove an object;
the background colour."""

SIZE_ORDER: tuple[str, ...] = ("small", "medium", "large")

MOVE_WORDS: dict[str, str] = {
    "top left": "the top left corner", "top": "the top middle", "top right": "the top right corner",
    "left": "the middle left", "center": "the center", "right": "the middle right",
    "bottom left": "the bottom left corner", "bottom": "the bottom middle", "bottom right": "the bottom right corner",
}
"""How a move instruction names each cell (unambiguous: 'the left' could mean a column)."""

FILL_INSTRUCTION = {"solid": "solid", "striped": "striped", "dotted": "dotted", "outline": "outlined"}


@dataclass(frozen=True)
class Edit:
    """One change to a scene.

    ``target`` indexes ``scene.objects`` for color/size/fill/move/remove (None for add/background);
    ``value`` is the new colour, ``"bigger"``/``"smaller"``, the new fill, the new position name, the
    background name, or for ``add`` the object to add (``added``).
    """

    kind: str
    target: int | None = None
    value: str = ""
    added: Obj | None = None

    def __post_init__(self) -> None:
        if self.kind not in EDIT_KINDS:
            raise SceneError(f"unknown edit kind {self.kind!r}; expected one of {list(EDIT_KINDS)}")


@dataclass(frozen=True)
class EditTriple:
    """(previous description, instruction, new description) with the scenes and the edit they come from."""

    source: Scene
    target: Scene
    edit: Edit
    instruction: str
    before: str
    after: str


def refer(scene: Scene, i: int) -> str | None:
    """The shortest phrase naming object ``i`` alone: its shape, else colour and shape; None if neither is
    unique (then an instruction about it would be ambiguous)."""
    o = scene.objects[i]
    if sum(p.shape == o.shape for p in scene.objects) == 1:
        return o.shape
    if sum((p.color, p.shape) == (o.color, o.shape) for p in scene.objects) == 1:
        return f"{o.color} {o.shape}"
    return None


def _free_cells(scene: Scene) -> list[tuple[int, int]]:
    used = {o.cell for o in scene.objects} | ({scene.sign.cell} if scene.sign else set())
    return [c for c in CELL_NAMES if c not in used]


def _options(scene: Scene, kind: str, i: int | None) -> list[str]:
    """The values an edit of ``kind`` (on object ``i``) may take in ``scene``."""
    if kind == "background":
        return [b for b in BACKGROUNDS if b != scene.background]
    if kind == "add":
        return [f"{c} {s}" for c in COLORS for s in SHAPES if (c, s) not in HELD_OUT_COMBOS] if _free_cells(scene) else []
    assert i is not None
    o = scene.objects[i]
    if kind == "color":
        return [c for c in COLORS if c != o.color and (c, o.shape) not in HELD_OUT_COMBOS]
    if kind == "size":
        k = SIZE_ORDER.index(o.size)
        return (["smaller"] if k > 0 else []) + (["bigger"] if k < len(SIZE_ORDER) - 1 else [])
    if kind == "fill":
        return [f for f in FILLS if f != o.fill]
    if kind == "move":
        return [CELL_NAMES[c] for c in _free_cells(scene)]
    if kind == "remove":
        return ["-"] if len(scene.objects) >= 2 else []
    raise SceneError(f"unknown edit kind {kind!r}")


def sample_edit(scene: Scene, rng: random.Random, kinds: tuple[str, ...] = EDIT_KINDS) -> Edit | None:
    """A random edit of ``scene`` that an instruction can name unambiguously; None when there is none."""
    choices: list[tuple[str, int | None]] = []
    referable = [i for i in range(len(scene.objects)) if refer(scene, i) is not None]
    for kind in kinds:
        targets: list[int | None] = [None] if kind in ("add", "background") else list(referable)
        choices += [(kind, t) for t in targets if _options(scene, kind, t)]
    if not choices:
        return None
    kinds_ok = sorted({k for k, _ in choices}, key=kinds.index)
    kind = rng.choice(kinds_ok)  # kinds equally likely, then a target
    _, i = rng.choice([c for c in choices if c[0] == kind])
    value = rng.choice(_options(scene, kind, i))
    if kind == "add":
        color, shape = value.split(" ")
        r, c = rng.choice(_free_cells(scene))
        added = Obj(shape, color, rng.choice(SIZE_ORDER), rng.choice(FILLS), r, c,
                    round(rng.uniform(-1, 1), 3), round(rng.uniform(-1, 1), 3))
        return Edit("add", None, value, added)
    return Edit(kind, i, value)


def apply_edit(scene: Scene, edit: Edit) -> Scene:
    """The scene after ``edit``."""
    objs = list(scene.objects)
    if edit.kind == "background":
        return replace(scene, background=edit.value)
    if edit.kind == "add":
        if edit.added is None:
            raise SceneError("an 'add' edit needs the object to add")
        return replace(scene, objects=(*objs, edit.added))
    if edit.target is None or not 0 <= edit.target < len(objs):
        raise SceneError(f"edit target {edit.target!r} is not an object index of a {len(objs)}-object scene")
    o = objs[edit.target]
    if edit.kind == "remove":
        del objs[edit.target]
    elif edit.kind == "color":
        objs[edit.target] = replace(o, color=edit.value)
    elif edit.kind == "fill":
        objs[edit.target] = replace(o, fill=edit.value)
    elif edit.kind == "size":
        k = SIZE_ORDER.index(o.size) + (1 if edit.value == "bigger" else -1)
        objs[edit.target] = replace(o, size=SIZE_ORDER[max(0, min(k, len(SIZE_ORDER) - 1))])
    elif edit.kind == "move":
        r, c = POSITIONS[edit.value]
        objs[edit.target] = replace(o, row=r, col=c)
    return replace(scene, objects=tuple(objs))


def instruction(scene: Scene, edit: Edit, rng: random.Random) -> str:
    """The follow-up request for ``edit``, in a few phrasings (lower case, as people type them)."""
    if edit.kind == "background":
        return rng.choice((f"make the background {edit.value}", f"change the background to {edit.value}"))
    if edit.kind == "add":
        return rng.choice((f"add {article(edit.value)} {edit.value}", f"also add {article(edit.value)} {edit.value}"))
    ref = refer(scene, edit.target) if edit.target is not None else None
    if ref is None:
        raise SceneError(f"object {edit.target} of the scene cannot be named unambiguously")
    the = f"the {ref}"
    if edit.kind == "color":
        return rng.choice((f"make {the} {edit.value}", f"change {the} to {edit.value}", f"turn {the} {edit.value}"))
    if edit.kind == "size":
        word = edit.value if edit.value == "smaller" else rng.choice(("bigger", "larger"))
        return rng.choice((f"make {the} {word}", f"make {the} a bit {word}"))
    if edit.kind == "fill":
        return rng.choice((f"make {the} {FILL_INSTRUCTION[edit.value]}", f"give {the} a {edit.value} fill"))
    if edit.kind == "move":
        return rng.choice((f"move {the} to {MOVE_WORDS[edit.value]}", f"put {the} in {MOVE_WORDS[edit.value]}"))
    return rng.choice((f"remove {the}", f"take away {the}", f"delete {the}"))


def make_triple(scene: Scene, rng: random.Random, kinds: tuple[str, ...] = EDIT_KINDS) -> EditTriple | None:
    """One edit triple from ``scene``; None when no edit can be named unambiguously."""
    edit = sample_edit(scene, rng, kinds)
    if edit is None:
        return None
    target = apply_edit(scene, edit)
    text = instruction(scene, edit, rng)
    seed = rng.getrandbits(32)  # same caption seed before and after: unchanged parts keep their phrasing
    return EditTriple(scene, target, edit, text, descriptive_caption(scene, random.Random(seed)),
                      descriptive_caption(target, random.Random(seed)))


def edit_triples(scenes: list[Scene], seed: int = 0, kinds: tuple[str, ...] = EDIT_KINDS) -> list[EditTriple]:
    """One triple per scene that allows one (deterministic given ``seed``)."""
    rng = random.Random(seed)
    return [t for s in scenes if (t := make_triple(s, rng, kinds)) is not None]


# -- reading descriptions back -----------------------------------------------------------------------------
_PHRASE_TO_POS = sorted(((p, name) for name, ps in POSITION_PHRASES.items() for p in ps), key=lambda x: -len(x[0]))
_POS_RE = re.compile(r"\b(" + "|".join(re.escape(p) for p, _ in _PHRASE_TO_POS) + r")\b")
_FILL_OF = {w: f for f, ws in FILL_WORDS.items() for w in ws}
_WORD = r"([a-z][a-z-]*)"
_NP_RE = re.compile(rf"\b(a|an|{'|'.join(NUMBER_WORDS.values())}) ({'|'.join(SIZES)}) {_WORD} {_WORD} "
                    rf"({'|'.join(SHAPES)})(?:e?s)?\b")
_BG_RE = re.compile(r"\b(" + "|".join(sorted(BACKGROUNDS, key=len, reverse=True)) + r") background\b|"
                    r"\bbackground is (" + "|".join(sorted(BACKGROUNDS, key=len, reverse=True)) + r")\b")


def _positions(sentence: str) -> list[str]:
    names = dict(_PHRASE_TO_POS)
    return [names[m.group(1)] for m in _POS_RE.finditer(sentence)]


def parse_description(text: str, background: str | None = None) -> Scene | None:
    """Read a descriptive caption in the world's style back into a scene (jitter 0).

    None if it describes an impossible scene (two things in one cell, unknown words) or names no background
    and no default ``background`` is given (a description cut short often loses its background sentence).
    """
    ground, objs, sign = "none", [], None
    for sent in re.split(r"(?<=[.!?])\s+", text.strip()):
        low = sent.lower()
        if "background" in low and (m := _BG_RE.search(low)):
            background = m.group(1) or m.group(2)
            ground = next((g for g in GROUNDS if g != "none" and g in low), "none")
            continue
        if "sign" in low and (q := re.search(r'"([A-Za-z]+)"', sent)):
            pos = _positions(low)
            if not pos:
                return None
            try:
                sign = Sign(q.group(1).upper(), *POSITIONS[pos[0]])
            except SceneError:
                return None
            continue
        m = _NP_RE.search(low)
        if m is None:
            continue  # counts and relations follow from the objects
        _, size, w1, w2, shape = m.groups()
        if w1 in COLORS and w2 in _FILL_OF:
            color, fill = w1, _FILL_OF[w2]
        elif w2 in COLORS and w1 in _FILL_OF:
            color, fill = w2, _FILL_OF[w1]
        else:
            return None
        for pos in _positions(low[:m.start()] + " " + low[m.end():]):
            objs.append(Obj(shape, color, size, fill, *POSITIONS[pos]))
    if background is None:
        return None
    try:
        return Scene(background=background, ground=ground, objects=tuple(objs), sign=sign)
    except SceneError:
        return None


def edit_reflected(triple: EditTriple, text: str) -> bool:
    """Whether a model's new description, read back with :func:`parse_description`, carries the triple's
    edit: the new background; as many objects of the added or removed colour and shape as the target
    scene (and the removed object's cell empty); the recoloured, resized, refilled or moved object present
    with all its attributes in its (new) cell and no longer as it was. Other changes, right or wrong, are
    not looked at here (compare the parse with ``triple.target`` for that). A description that names no
    background keeps the source's, as a reader would assume."""
    parsed = parse_description(text, background=triple.source.background)
    if parsed is None:
        return False
    e, src, dst = triple.edit, triple.source, triple.target
    at = {o.cell: o for o in parsed.objects}
    if e.kind == "background":
        return parsed.background == dst.background
    if e.kind == "add":
        key = (e.added.color, e.added.shape) if e.added else None
        return parsed.counts().get(key, 0) == dst.counts().get(key, 0)
    old = src.objects[e.target]
    if e.kind == "remove":
        key = (old.color, old.shape)
        return old.cell not in at and parsed.counts().get(key, 0) == dst.counts().get(key, 0)
    if e.kind == "move":
        r, c = POSITIONS[e.value]
        new = at.get((r, c))
        return old.cell not in at and new is not None and new.kind() == old.kind()
    want = apply_edit(src, e).objects
    new_obj = next(o for o in want if o.cell == old.cell)
    got = at.get(old.cell)
    return got is not None and got.kind() == new_obj.kind()


def _matching(scene: Scene, ref: str) -> list[Obj]:
    words = ref.split()
    return [o for o in scene.objects if o.shape == words[-1] and (len(words) == 1 or o.color == words[0])]


def edit_named(triple: EditTriple, text: str) -> bool:
    """A looser reading than :func:`edit_reflected`: whether the change the instruction NAMES is in the new
    description, whatever else the model got wrong about the object. Background: the new one. Add/remove:
    as many objects of that colour and shape as the target. Recolour: as many objects of the shape in the
    old and in the new colour as the target. Resize/refill/move: the object phrase ('the star', 'the red
    circle') still picks out one object, and it has the new size / fill / cell."""
    parsed = parse_description(text, background=triple.source.background)
    if parsed is None:
        return False
    e, src, dst = triple.edit, triple.source, triple.target
    if e.kind == "background":
        return parsed.background == dst.background
    if e.kind == "add":
        key = (e.added.color, e.added.shape) if e.added else None
        return parsed.counts().get(key, 0) == dst.counts().get(key, 0)
    old = src.objects[e.target]
    got, want = parsed.counts(), dst.counts()
    if e.kind == "remove":
        return got.get((old.color, old.shape), 0) == want.get((old.color, old.shape), 0)
    if e.kind == "color":
        return all(got.get((c, old.shape), 0) == want.get((c, old.shape), 0) for c in (old.color, e.value))
    ref = refer(src, e.target)
    hits = _matching(parsed, ref) if ref else []
    if len(hits) != 1:
        return False
    new = next(o for o in dst.objects if o.cell == (POSITIONS[e.value] if e.kind == "move" else old.cell))
    return {"size": hits[0].size == new.size, "fill": hits[0].fill == new.fill,
            "move": hits[0].cell == new.cell}[e.kind]


__all__ = ["EDIT_KINDS", "Edit", "EditTriple", "MOVE_WORDS", "apply_edit", "edit_named", "edit_reflected", "edit_triples",
           "instruction", "make_triple", "parse_description", "refer", "sample_edit"]
