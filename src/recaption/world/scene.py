"""The shapes world's vocabulary and scene graph.

A scene is a background colour (with an optional ground band), up to nine objects on a 3x3 grid (one per
cell, so every object is recoverable from the image), and sometimes a sign carrying a short text label.
Each object has a shape, a colour, a size class and a fill texture; relations (left of, right of, above,
below) follow from the grid cells. ``dx``/``dy`` are a small placement jitter in [-1, 1] (a fraction of
the slack the object has inside its cell); they change pixels, never the meaning of the scene.

Colours are chosen far apart in RGB (and object colours far from every background, ground and sign colour)
so that they survive anti-aliasing and a VAE round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "diamond")
"""Object shapes; their silhouettes differ in corners and area, so the oracle tells them apart."""

SHAPE_PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES}

SHAPE_PROPERTIES: dict[str, tuple[str, ...]] = {
    "circle": ("shape with no corners", "perfectly round shape", "shape with no straight edges"),
    "square": ("shape with four equal sides and four right angles", "box-shaped shape with four right angles"),
    "triangle": ("shape with three corners", "shape with three sides", "three-sided shape"),
    "star": ("shape with five points", "five-pointed shape", "pointy shape with five tips"),
    "hexagon": ("shape with six sides", "six-sided shape", "shape with six corners"),
    "diamond": ("square standing on one corner", "rhombus balanced on its tip", "shape like a tilted square"),
}
"""Descriptions by property, for prompts that name a shape without its name."""

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (240, 210, 0),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (140, 50, 190),
    "pink": (255, 110, 190),
    "brown": (130, 80, 30),
}
"""Object colours (name -> RGB): saturated, pairwise far apart, and never white, black or grey."""

SIZES: dict[str, float] = {"small": 0.55, "medium": 0.72, "large": 0.9}
"""Size classes: side of the object's bounding box as a fraction of the grid cell's side."""

FILLS: tuple[str, ...] = ("solid", "striped", "dotted", "outline")
"""Fill textures. Striped, dotted and outline objects all keep a border, so the silhouette stays visible."""

GRID = 3
"""The scene is a GRID x GRID grid of cells; each object or sign occupies one cell."""

POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0), "top": (0, 1), "top right": (0, 2),
    "left": (1, 0), "center": (1, 1), "right": (1, 2),
    "bottom left": (2, 0), "bottom": (2, 1), "bottom right": (2, 2),
}
"""Position name -> (row, col) grid cell."""

CELL_NAMES: dict[tuple[int, int], str] = {v: k for k, v in POSITIONS.items()}

POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left", "in the top left corner", "at the upper left"),
    "top": ("at the top", "at the top center", "in the top middle"),
    "top right": ("in the top right", "in the top right corner", "at the upper right"),
    "left": ("on the left", "at the middle left", "on the left side"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "at the middle right", "on the right side"),
    "bottom left": ("in the bottom left", "in the bottom left corner", "at the lower left"),
    "bottom": ("at the bottom", "at the bottom center", "in the bottom middle"),
    "bottom right": ("in the bottom right", "in the bottom right corner", "at the lower right"),
}
"""Ways to say each position in a caption or prompt (first is canonical)."""

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "gray": (190, 190, 190),
    "light blue": (175, 210, 245),
    "cream": (245, 235, 200),
    "black": (45, 45, 45),
}
"""Background colours (name -> RGB): pale or dark, far from every object colour and from the sign's
white board and black ink (so "black" is a charcoal)."""

GROUNDS: dict[str, tuple[int, int, int] | None] = {
    "none": None,
    "grass": (140, 205, 120),
    "sand": (215, 190, 140),
}
"""Optional ground band along the bottom of the image (name -> RGB, None for no band)."""

GROUND_TOP = 0.75
"""The ground band covers the image from this fraction of its height down."""

SIGN_COLOR: tuple[int, int, int] = (255, 255, 255)
INK_COLOR: tuple[int, int, int] = (0, 0, 0)
"""A sign is a white board with a black border and black upper-case letters."""

TEXT_MAX_LEN = 3
TEXT_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
TEXT_WORDS: tuple[str, ...] = (
    "SUN", "CAT", "DOG", "BOX", "TOP", "HAT", "BIG", "HI", "GO", "OK", "NO", "YES", "ART", "FUN", "SKY",
    "MAP", "JOY", "ZOO", "OWL", "BUS", "KEY", "ICE", "WAX", "FOX", "EGG", "UP", "ON", "OFF", "HUB", "ZIP",
)
"""Labels the sampler draws from (plus random letter strings); every label has 2 or 3 letters."""

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
"""Spatial relations between two objects; they follow from the objects' grid cells."""

INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

HELD_OUT_COMBOS: frozenset[tuple[str, str]] = frozenset({
    ("green", "star"), ("pink", "hexagon"), ("brown", "triangle"), ("blue", "diamond"),
})
"""(colour, shape) pairs the training-data sampler never produces: the prompt suite's 'unusual' category."""


class SceneError(ValueError):
    """A scene or object description is invalid; the message names the bad field."""


def _check(value: Any, allowed: Any, what: str) -> None:
    if value not in allowed:
        raise SceneError(f"unknown {what} {value!r}; expected one of {sorted(allowed)}")


@dataclass(frozen=True)
class Obj:
    """One object: shape, colour, size class, fill, grid cell (row, col) and placement jitter."""

    shape: str
    color: str
    size: str
    fill: str
    row: int
    col: int
    dx: float = 0.0
    dy: float = 0.0

    def __post_init__(self) -> None:
        _check(self.shape, SHAPES, "shape")
        _check(self.color, COLORS, "colour")
        _check(self.size, SIZES, "size")
        _check(self.fill, FILLS, "fill")
        if not (0 <= self.row < GRID and 0 <= self.col < GRID):
            raise SceneError(f"object cell ({self.row}, {self.col}) is outside the {GRID}x{GRID} grid")

    @property
    def position(self) -> str:
        """The position name of this object's cell, e.g. 'top left'."""
        return CELL_NAMES[(self.row, self.col)]

    @property
    def cell(self) -> tuple[int, int]:
        return (self.row, self.col)

    def kind(self) -> tuple[str, str, str, str]:
        """(shape, colour, size, fill): objects with equal kinds are identical."""
        return (self.shape, self.color, self.size, self.fill)

    def semantic(self) -> tuple:
        """Everything that matters about the object (no jitter)."""
        return (self.row, self.col, self.shape, self.color, self.size, self.fill)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": self.color, "size": self.size, "fill": self.fill,
                "position": self.position, "row": self.row, "col": self.col,
                "dx": round(self.dx, 4), "dy": round(self.dy, 4)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Obj:
        if not isinstance(d, dict):
            raise SceneError(f"object must be a JSON object, got {d!r}")
        try:
            if "row" in d and "col" in d:
                row, col = int(d["row"]), int(d["col"])
            else:
                _check(d.get("position"), POSITIONS, "position")
                row, col = POSITIONS[d["position"]]
            return cls(shape=d["shape"], color=d["color"], size=d["size"], fill=d["fill"], row=row, col=col,
                       dx=float(d.get("dx", 0.0)), dy=float(d.get("dy", 0.0)))
        except KeyError as e:
            raise SceneError(f"object {d!r} is missing field {e.args[0]!r}") from e


@dataclass(frozen=True)
class Sign:
    """A white sign with a short upper-case text label, occupying one grid cell."""

    text: str
    row: int
    col: int
    dx: float = 0.0
    dy: float = 0.0

    def __post_init__(self) -> None:
        if not (1 <= len(self.text) <= TEXT_MAX_LEN) or any(c not in TEXT_ALPHABET for c in self.text):
            raise SceneError(f"sign text {self.text!r} must be 1-{TEXT_MAX_LEN} letters A-Z")
        if not (0 <= self.row < GRID and 0 <= self.col < GRID):
            raise SceneError(f"sign cell ({self.row}, {self.col}) is outside the {GRID}x{GRID} grid")

    @property
    def position(self) -> str:
        return CELL_NAMES[(self.row, self.col)]

    @property
    def cell(self) -> tuple[int, int]:
        return (self.row, self.col)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "position": self.position, "row": self.row, "col": self.col,
                "dx": round(self.dx, 4), "dy": round(self.dy, 4)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sign:
        if not isinstance(d, dict) or "text" not in d:
            raise SceneError(f"sign must be a JSON object with a 'text' field, got {d!r}")
        if "row" in d and "col" in d:
            row, col = int(d["row"]), int(d["col"])
        else:
            _check(d.get("position"), POSITIONS, "position")
            row, col = POSITIONS[d["position"]]
        return cls(text=str(d["text"]), row=row, col=col, dx=float(d.get("dx", 0.0)), dy=float(d.get("dy", 0.0)))


@dataclass(frozen=True)
class Scene:
    """A background, a ground band, objects in distinct cells (sorted row-major), and an optional sign."""

    background: str = "white"
    ground: str = "none"
    objects: tuple[Obj, ...] = field(default_factory=tuple)
    sign: Sign | None = None

    def __post_init__(self) -> None:
        _check(self.background, BACKGROUNDS, "background")
        _check(self.ground, GROUNDS, "ground")
        objs = tuple(sorted(self.objects, key=lambda o: (o.row, o.col)))
        object.__setattr__(self, "objects", objs)
        cells = [o.cell for o in objs] + ([self.sign.cell] if self.sign else [])
        if len(set(cells)) != len(cells):
            raise SceneError(f"two things share a grid cell in {cells}")

    @property
    def text(self) -> str | None:
        """The sign's text label, or None when there is no sign."""
        return self.sign.text if self.sign else None

    def semantic(self) -> tuple:
        """Everything that matters about the scene (no jitter); equal for exactly-recovered scenes."""
        return (self.background, self.ground, tuple(o.semantic() for o in self.objects),
                (self.sign.text, self.sign.row, self.sign.col) if self.sign else None)

    def same_as(self, other: Scene) -> bool:
        """True when both scenes agree on everything but placement jitter."""
        return self.semantic() == other.semantic()

    def counts(self) -> dict[tuple[str, str], int]:
        """How many objects of each (colour, shape)."""
        out: dict[tuple[str, str], int] = {}
        for o in self.objects:
            out[(o.color, o.shape)] = out.get((o.color, o.shape), 0) + 1
        return out

    def relations(self) -> list[tuple[int, str, int]]:
        """All (i, relation, j) facts between objects i and j that follow from their cells."""
        return [(i, r, j) for i, a in enumerate(self.objects) for j, b in enumerate(self.objects)
                if i != j for r in RELATIONS if relation_holds(a, r, b)]

    def to_dict(self) -> dict[str, Any]:
        return {"background": self.background, "ground": self.ground,
                "objects": [o.to_dict() for o in self.objects],
                "sign": self.sign.to_dict() if self.sign else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        if not isinstance(d, dict):
            raise SceneError(f"scene must be a JSON object, got {type(d).__name__}")
        sign = d.get("sign")
        return cls(background=d.get("background", "white"), ground=d.get("ground", "none"),
                   objects=tuple(Obj.from_dict(o) for o in d.get("objects", [])),
                   sign=Sign.from_dict(sign) if sign else None)


def relation_holds(a: Obj | Sign, rel: str, b: Obj | Sign) -> bool:
    """Whether ``a rel b`` holds: left of / right of compare columns, above / below compare rows."""
    if rel == "left of":
        return a.col < b.col
    if rel == "right of":
        return a.col > b.col
    if rel == "above":
        return a.row < b.row
    if rel == "below":
        return a.row > b.row
    raise SceneError(f"unknown relation {rel!r}; expected one of {list(RELATIONS)}")
