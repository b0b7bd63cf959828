"""Anti-aliased renderer: scene -> RGB image (64 px by default, any size).

Every object is drawn with hard edges at 4x supersampling inside its own bounding box and box-filtered down,
so a pixel is exactly ``background + coverage * (colour - background)``. Bounding boxes are snapped to the
output pixel grid and lie inside the object's grid cell; hence an object of a given (shape, size, fill) is
the same coverage template wherever it sits, which is what lets the oracle read scenes back exactly.
Templates are cached per image size, so rendering is a handful of numpy blends (tens of microseconds).
"""

from __future__ import annotations

import functools
import math
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw

from recaption.world.scene import (
    BACKGROUNDS,
    COLORS,
    GRID,
    GROUND_TOP,
    GROUNDS,
    INK_COLOR,
    SIGN_COLOR,
    SIZES,
    Obj,
    Scene,
    SceneError,
    Sign,
)

SS = 4
"""Supersampling factor of the anti-aliasing."""

BASE = 64
"""Reference image size: line widths, pattern periods and the sign's font are in units of size/BASE px."""

_FONT_ROWS = {
    "A": ".###.|#...#|#...#|#####|#...#|#...#|#...#", "B": "####.|#...#|#...#|####.|#...#|#...#|####.",
    "C": ".###.|#...#|#....|#....|#....|#...#|.###.", "D": "####.|#...#|#...#|#...#|#...#|#...#|####.",
    "E": "#####|#....|#....|####.|#....|#....|#####", "F": "#####|#....|#....|####.|#....|#....|#....",
    "G": ".###.|#...#|#....|#.###|#...#|#...#|.####", "H": "#...#|#...#|#...#|#####|#...#|#...#|#...#",
    "I": ".###.|..#..|..#..|..#..|..#..|..#..|.###.", "J": "..###|...#.|...#.|...#.|...#.|#..#.|.##..",
    "K": "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#", "L": "#....|#....|#....|#....|#....|#....|#####",
    "M": "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#", "N": "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#",
    "O": ".###.|#...#|#...#|#...#|#...#|#...#|.###.", "P": "####.|#...#|#...#|####.|#....|#....|#....",
    "Q": ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#", "R": "####.|#...#|#...#|####.|#.#..|#..#.|#...#",
    "S": ".####|#....|#....|.###.|....#|....#|####.", "T": "#####|..#..|..#..|..#..|..#..|..#..|..#..",
    "U": "#...#|#...#|#...#|#...#|#...#|#...#|.###.", "V": "#...#|#...#|#...#|#...#|#...#|.#.#.|..#..",
    "W": "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.", "X": "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#",
    "Y": "#...#|#...#|.#.#.|..#..|..#..|..#..|..#..", "Z": "#####|....#|...#.|..#..|.#...|#....|#####",
}
FONT: dict[str, np.ndarray] = {
    ch: np.array([[c == "#" for c in row] for row in rows.split("|")], dtype=bool) for ch, rows in _FONT_ROWS.items()
}
"""A 5x7 bitmap font (upper case), drawn one font pixel per size/64 output pixels: legible at 64 px."""
GLYPH_W, GLYPH_H = 5, 7
SIGN_BORDER, SIGN_PAD, GLYPH_GAP = 1, 1, 1  # in font units


def sign_units(n_letters: int) -> tuple[int, int]:
    """(width, height) of a sign with ``n_letters`` letters, in font units."""
    inner = 2 * (SIGN_BORDER + SIGN_PAD)
    return (n_letters * (GLYPH_W + GLYPH_GAP) - GLYPH_GAP + inner, GLYPH_H + inner)


# -- layout shared with the oracle -----------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def cell_edges(size: int) -> tuple[int, ...]:
    """Pixel edges of the grid cells along one axis (GRID + 1 integers)."""
    return tuple(round(i * size / GRID) for i in range(GRID + 1))


def unit(size: int) -> float:
    return size / BASE


def object_px(size_class: str, size: int) -> int:
    """Side in pixels of the bounding box of an object of ``size_class`` in a ``size`` px image."""
    cw = size // GRID
    return max(3, round(SIZES[size_class] * cw))


def ground_top(size: int) -> int:
    return round(GROUND_TOP * size)


def place(row: int, col: int, w: int, h: int, dx: float, dy: float, size: int) -> tuple[int, int]:
    """Top-left pixel of a ``w`` x ``h`` box in cell (row, col) with jitter (dx, dy) in [-1, 1]."""
    e = cell_edges(size)
    out = []
    for lo, hi, extent, j in ((e[col], e[col + 1], w, dx), (e[row], e[row + 1], h, dy)):
        half = max(0, (hi - lo - extent) // 2)
        out.append(lo + half + int(round(max(-1.0, min(1.0, j)) * half)))
    return out[0], out[1]


def background_map(background: str, ground: str, size: int) -> np.ndarray:
    """(size, size, 3) float32 background colours, with the ground band when there is one (a fresh copy)."""
    return _background_map(background, ground, size).copy()


@functools.lru_cache(maxsize=64)
def _background_map(background: str, ground: str, size: int) -> np.ndarray:
    img = np.empty((size, size, 3), np.float32)
    img[:] = np.asarray(BACKGROUNDS[background], np.float32)
    g = GROUNDS[ground]
    if g is not None:
        img[ground_top(size):] = np.asarray(g, np.float32)
    img.setflags(write=False)
    return img


# -- templates ---------------------------------------------------------------------------------------------
def _shape_outline(shape: str, S: int) -> list[tuple[float, float]] | None:
    """Polygon (canvas coordinates) of ``shape`` filling an S x S box; None for the circle."""
    if shape == "circle":
        return None
    if shape == "square":
        return [(0, 0), (S, 0), (S, S), (0, S)]
    if shape == "diamond":
        return [(S / 2, 0), (S, S / 2), (S / 2, S), (0, S / 2)]
    if shape == "triangle":
        return [(S / 2, 0), (S, S), (0, S)]
    if shape == "hexagon":  # flat top and bottom: width S, height S*sqrt(3)/2, centred
        r = S / 2
        return [(r + r * math.cos(math.radians(a)), r + r * math.sin(math.radians(a)))
                for a in (0, 60, 120, 180, 240, 300)]
    if shape == "star":  # five points, inner radius 0.5 (fat, so fills stay visible), box-filling
        R = S / (2 * math.sin(math.radians(72)))
        top = (S - R * (1 + math.cos(math.radians(36)))) / 2
        cx, cy = S / 2, top + R
        pts = []
        for k in range(10):
            rad = R if k % 2 == 0 else R * 0.5
            a = math.radians(-90 + 36 * k)
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    raise SceneError(f"unknown shape {shape!r}")


def _silhouette(shape: str, S: int) -> Image.Image:
    m = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(m)
    poly = _shape_outline(shape, S)
    if poly is None:
        d.ellipse([0, 0, S - 1, S - 1], fill=255)
    else:
        d.polygon([(x - 0.5 if x >= S else x, y - 0.5 if y >= S else y) for x, y in poly], fill=255)
    return m


def _pattern(fill: str, S: int, period: int) -> np.ndarray:
    """Boolean (S, S) canvas pattern of a fill texture, anchored at the box's top-left corner."""
    yy, xx = np.mgrid[0:S, 0:S]
    if fill == "striped":  # diagonal stripes, half on
        return ((xx + yy) % period) < period // 2
    if fill == "dotted":  # round dots on a square lattice
        c = period / 2
        r = period * 0.3
        return ((xx % period + 0.5 - c) ** 2 + (yy % period + 0.5 - c) ** 2) <= r * r
    raise SceneError(f"no pattern for fill {fill!r}")


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary erosion by a (2r+1)-square, the outside counting as empty (separable min filter)."""
    win = np.lib.stride_tricks.sliding_window_view
    p = np.pad(mask, r, constant_values=False)
    p = win(p, 2 * r + 1, axis=1).min(-1)
    return win(p, 2 * r + 1, axis=0).min(-1)


@functools.lru_cache(maxsize=512)
def object_template(shape: str, size_class: str, fill: str, size: int) -> np.ndarray:
    """(s, s) float32 coverage in [0, 1] of one object in a ``size`` px image (cached)."""
    s = object_px(size_class, size)
    S = s * SS
    sil = _silhouette(shape, S)
    mask = np.asarray(sil) > 0
    if fill != "solid":
        border = max(1, round(SS * unit(size)))  # 1 output px at 64 px
        inner = _erode(mask, border)
        edge = mask & ~inner
        if fill == "outline":
            mask = edge
        else:
            period = max(SS * 2, round(SS * 4 * unit(size)))  # 4 output px at 64 px
            mask = edge | (inner & _pattern(fill, S, period))
    cov = mask.reshape(s, SS, s, SS).mean(axis=(1, 3), dtype=np.float32)
    cov.setflags(write=False)
    return cov


def sign_box(n_letters: int, size: int) -> tuple[int, int]:
    """(w, h) in output pixels of a sign with ``n_letters`` letters."""
    wu, hu = sign_units(n_letters)
    u = unit(size)
    return max(1, round(wu * u)), max(1, round(hu * u))


@functools.lru_cache(maxsize=16)
def sign_grid(n_letters: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each supersampled canvas row / column of a sign, the font unit it falls in; plus the exact
    per-pixel (rows, cols) weights that box-filter the canvas down to output pixels."""
    w, h = sign_box(n_letters, size)
    wu, hu = sign_units(n_letters)
    ix = np.minimum(((np.arange(w * SS) + 0.5) * wu / (w * SS)).astype(int), wu - 1)
    iy = np.minimum(((np.arange(h * SS) + 0.5) * hu / (h * SS)).astype(int), hu - 1)
    # ink coverage = Ry @ bitmap @ Rx.T, where R[p, u] = share of output pixel p's subsamples in unit u
    ry = np.zeros((h, hu), np.float32)
    np.add.at(ry, (np.arange(h * SS) // SS, iy), 1.0 / SS)
    rx = np.zeros((w, wu), np.float32)
    np.add.at(rx, (np.arange(w * SS) // SS, ix), 1.0 / SS)
    return iy, ix, ry, rx


def sign_bitmap(text: str) -> np.ndarray:
    """(hu, wu) boolean ink of a sign in font units: border plus letters."""
    wu, hu = sign_units(len(text))
    bm = np.zeros((hu, wu), bool)
    bm[:SIGN_BORDER] = bm[-SIGN_BORDER:] = True
    bm[:, :SIGN_BORDER] = bm[:, -SIGN_BORDER:] = True
    off = SIGN_BORDER + SIGN_PAD
    for i, ch in enumerate(text):
        x = off + i * (GLYPH_W + GLYPH_GAP)
        bm[off:off + GLYPH_H, x:x + GLYPH_W] = FONT[ch]
    return bm


@functools.lru_cache(maxsize=1024)
def sign_template(text: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(board, ink) coverages of a sign in a ``size`` px image: board is white, ink is black (cached)."""
    w, h = sign_box(len(text), size)
    _, _, ry, rx = sign_grid(len(text), size)
    inkc = (ry @ sign_bitmap(text).astype(np.float32) @ rx.T).astype(np.float32)
    board = np.ones((h, w), np.float32)
    board.setflags(write=False)
    inkc.setflags(write=False)
    return board, inkc


# -- rendering ---------------------------------------------------------------------------------------------
def object_box(o: Obj, size: int) -> tuple[int, int, int]:
    """(x0, y0, side) of the object's bounding box in pixels."""
    s = object_px(o.size, size)
    x0, y0 = place(o.row, o.col, s, s, o.dx, o.dy, size)
    return x0, y0, s


def sign_origin(sign: Sign, size: int) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) of the sign's box in pixels."""
    w, h = sign_box(len(sign.text), size)
    x0, y0 = place(sign.row, sign.col, w, h, sign.dx, sign.dy, size)
    return x0, y0, w, h


def _blend(img: np.ndarray, cov: np.ndarray, x0: int, y0: int, color: tuple[int, int, int]) -> None:
    h, w = cov.shape
    region = img[y0:y0 + h, x0:x0 + w]
    region += cov[..., None] * (np.asarray(color, np.float32) - region)


@functools.lru_cache(maxsize=4096)
def _paint(shape: str, size_class: str, fill: str, color: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(1 - coverage, coverage * colour) of one object, so that blending is two in-place operations."""
    cov = object_template(shape, size_class, fill, size)[..., None]
    return (1.0 - cov).astype(np.float32), (cov * np.asarray(COLORS[color], np.float32)).astype(np.float32)


def render_array(scene: Scene, size: int = 64) -> np.ndarray:
    """(size, size, 3) uint8 rendering of ``scene``."""
    if size < 24:
        raise SceneError(f"image size must be at least 24 px, got {size}")
    img = background_map(scene.background, scene.ground, size)
    for o in scene.objects:
        x0, y0, s = object_box(o, size)
        keep, add = _paint(o.shape, o.size, o.fill, o.color, size)
        region = img[y0:y0 + s, x0:x0 + s]
        region *= keep
        region += add
    if scene.sign is not None:
        board, ink = sign_template(scene.sign.text, size)
        x0, y0, _, _ = sign_origin(scene.sign, size)
        _blend(img, board, x0, y0, SIGN_COLOR)
        _blend(img, ink, x0, y0, INK_COLOR)
    return np.rint(img).astype(np.uint8)


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Render ``scene`` as an RGB PIL image of ``size`` x ``size`` pixels."""
    return Image.fromarray(render_array(scene, size), "RGB")


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(arr: np.ndarray, level: int = 1) -> bytes:
    """Encode an (H, W, 3) uint8 array as an RGB PNG (filter None, zlib ``level``): lossless, and about
    three times faster than PIL for the world's small images, which matters when writing 1,000+ scenes/s."""
    h, w, c = arr.shape
    if c != 3 or arr.dtype != np.uint8:
        raise ValueError(f"png_bytes needs an (H, W, 3) uint8 array, got {arr.shape} {arr.dtype}")
    raw = np.zeros((h, 1 + w * 3), np.uint8)
    raw[:, 1:] = arr.reshape(h, w * 3)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + _chunk(b"IEND", b""))
