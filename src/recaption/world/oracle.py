"""Oracle parser: read a rendered (or generated) image back into a :class:`Scene`.

Analysis by synthesis, one grid cell at a time:

1. background and ground band: the (background, ground) pair from the palette that explains most pixels
   (near the horizon, any mix of the two counts as background, since a soft image blends them);
2. a cell holds something when enough pixels differ from the background inside it (blur spilling over a
   cell edge does not count);
3. a sign is achromatic (white board, black ink) where every object colour is saturated; it is read by
   fitting "background outside the board + border + one glyph per slot" for every letter count, placement
   near the sign-like pixels and blur, choosing each slot's glyph by least absolute error;
4. an object's colour is the palette colour whose mix with the background, pixel by pixel, leaves the least
   residual; that mix gives each pixel's coverage;
5. shape, size and fill: the renderer's coverage template (cached per image size), sharp or blurred, that
   best matches the coverage, aligned on the centroid (with a +-1 px search).

On clean renders at 64 px this recovers the exact scene (bench/RESULTS.md: 1000/1000); on softer
images (blur, resampling, a model's output) it returns the nearest scene.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from PIL import Image

from recaption.world.render import (
    FONT,
    GLYPH_GAP,
    GLYPH_H,
    GLYPH_W,
    SIGN_BORDER,
    SIGN_PAD,
    cell_edges,
    ground_top,
    object_px,
    object_template,
    sign_box,
    sign_grid,
    sign_units,
    unit,
)
from recaption.world.scene import (
    BACKGROUNDS,
    COLORS,
    FILLS,
    GRID,
    GROUNDS,
    SHAPES,
    SIZES,
    TEXT_MAX_LEN,
    Obj,
    Scene,
    Sign,
)

FG_DIST = 40.0
"""A pixel belongs to the foreground when it is this far (RGB distance) from the background."""
SIGN_MAX_SATURATION = 30.0
SIGN_MIN_SHARE = 0.5
SIGN_MIN_RESIDUAL = 25.0
"""A cell holds the sign when at least this share of its foreground pixels is achromatic (max - min
channel below SIGN_MAX_SATURATION), no object colour explains them (mean residual above SIGN_MIN_RESIDUAL),
and some of those are brighter or much darker than the background: sign pixels are white, black or grey,
object colours are saturated, and their soft edges only look grey against a complementary background."""
BOX_THRESHOLD = 0.3
"""An object needs some pixel with at least this coverage of its colour."""
_COLOR_NAMES = list(COLORS)
_COLOR_ARR = np.array([COLORS[c] for c in _COLOR_NAMES], np.float32)  # (C, 3)


def _to_array(image: Any) -> np.ndarray:
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    else:
        arr = np.asarray(image, dtype=np.float32)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got array of shape {arr.shape}")
        if arr.max() <= 1.0 and arr.dtype != np.uint8:
            arr = arr * 255.0
    h, w = arr.shape[:2]
    if h != w:
        side = min(h, w)
        arr = np.asarray(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).resize((side, side),
                                                                                      Image.BILINEAR),
                         np.float32)
    return arr


def _background(arr: np.ndarray) -> tuple[str, str]:
    size = arr.shape[0]
    gt = ground_top(size)
    top, bottom = arr[:gt].reshape(-1, 3), arr[gt:].reshape(-1, 3)

    def votes(pixels: np.ndarray, palette: dict[str, Any]) -> dict[str, int]:
        return {n: int((np.linalg.norm(pixels - np.asarray(c, np.float32), axis=1) < FG_DIST).sum())
                for n, c in palette.items() if c is not None}

    tv = votes(top, BACKGROUNDS)
    bg = max(tv, key=tv.get)
    bv = votes(bottom, {**{g: c for g, c in GROUNDS.items()}, "none": BACKGROUNDS[bg]})
    return bg, max(bv, key=bv.get)


BLUR_SIGMAS = (0.0, 0.6, 1.0)
"""Blurs (in pixels at 64 px) the templates are compared at: a model's output is often softer than a render."""
SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _gauss(a: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return a
    r = max(1, int(np.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    a = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 0, a)
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 1, a)


def _centroid(cov: np.ndarray) -> np.ndarray:
    w = np.clip(cov - 0.1, 0, None)
    tot = w.sum()
    if tot <= 0:
        return np.array([cov.shape[0] / 2, cov.shape[1] / 2])
    ys, xs = np.mgrid[0:cov.shape[0], 0:cov.shape[1]]
    return np.array([(w * ys).sum() / tot, (w * xs).sum() / tot])


@functools.lru_cache(maxsize=16)
def _bank(size: int) -> list[tuple[str, int, int, list[tuple[str, str]], np.ndarray, np.ndarray]]:
    """Per size class: (size, side, margin, [(shape, fill)], templates (B, K, S, S) at each blur, centroids)."""
    margin = int(np.ceil(2.5 * max(BLUR_SIGMAS) * unit(size)))
    out = []
    for sc in SIZES:
        s = object_px(sc, size)
        S = s + 2 * margin
        keys, stack = [], []
        for shape in SHAPES:
            for fill in FILLS:
                t = np.zeros((S, S), np.float32)
                t[margin:margin + s, margin:margin + s] = object_template(shape, sc, fill, size)
                keys.append((shape, fill))
                stack.append(t)
        base = np.stack(stack)
        blurred = np.stack([np.stack([_gauss(t, sig * unit(size)) for t in base]) for sig in BLUR_SIGMAS])
        cents = np.stack([_centroid(t) for t in base])
        out.append((sc, s, margin, keys, blurred.astype(np.float32), cents))
    return out


def _match(cov: np.ndarray, size: int) -> tuple[str, str, str, int, int]:
    """Best (shape, size class, fill) for a coverage map, and the object's top-left pixel (x0, y0)."""
    h, w = cov.shape
    total = float(cov.sum())
    oc = _centroid(cov)
    bank = _bank(size)
    P = max(b[1] + 2 * b[2] for b in bank) + 2
    covp = np.zeros((h + 2 * P, w + 2 * P), np.float32)
    covp[P:P + h, P:P + w] = cov
    best = (np.inf, None)
    for sc, s, margin, keys, blurred, cents in bank:
        S = s + 2 * margin
        win = np.lib.stride_tricks.sliding_window_view(covp, (S, S))  # (H', W', S, S)
        base = np.rint(oc[None, :] - cents).astype(int)  # (K, 2) template top-left (padded) in cell coords
        sh = np.array(SHIFTS)  # (J, 2)
        tl = base[:, None, :] + sh[None, :, :] + P  # (K, J, 2) in covp coords
        tl[..., 0] = np.clip(tl[..., 0], 0, win.shape[0] - 1)
        tl[..., 1] = np.clip(tl[..., 1], 0, win.shape[1] - 1)
        wins = win[tl[..., 0], tl[..., 1]]  # (K, J, S, S)
        inside = wins.sum(axis=(2, 3))  # (K, J)
        err = np.abs(wins[None] - blurred[:, :, None]).sum(axis=(3, 4)) + (total - inside)[None]  # (B, K, J)
        b, k, j = np.unravel_index(int(np.argmin(err)), err.shape)
        if err[b, k, j] < best[0]:
            y0, x0 = tl[k, j] - P + margin
            best = (float(err[b, k, j]), (keys[k][0], sc, keys[k][1], int(x0), int(y0)))
    return best[1]


def _color_fit(patch: np.ndarray, bgp: np.ndarray, fg: np.ndarray) -> tuple[int, float]:
    """The palette colour whose mix with the background best explains the foreground pixels, and the mean
    per-pixel residual of that explanation (large for a sign, whose white and black no object has)."""
    pix, bgpix = (patch - bgp)[fg], bgp[fg]  # (n, 3)
    vec = _COLOR_ARR[None, :, :] - bgpix[:, None, :]  # (n, C, 3)
    alpha = np.clip((pix[:, None, :] * vec).sum(-1) / np.maximum((vec * vec).sum(-1), 1e-6), 0, 1)
    resid = np.linalg.norm(pix[:, None, :] - alpha[..., None] * vec, axis=-1).sum(0)  # (C,)
    ci = int(np.argmin(resid))
    return ci, float(resid[ci]) / max(1, len(pix))


def _read_object(patch: np.ndarray, bgp: np.ndarray, ci: int, size: int,
                 cell: tuple[int, int, int, int]) -> Obj | None:
    y_lo, y_hi, x_lo, x_hi = cell
    cvec = _COLOR_ARR[ci][None, None, :] - bgp
    cov = np.clip(((patch - bgp) * cvec).sum(-1) / np.maximum((cvec * cvec).sum(-1), 1e-6), 0, 1)  # (h, w)
    if float(cov.max()) < BOX_THRESHOLD:
        return None
    shape, sc, fill, x0, y0 = _match(cov.astype(np.float32), size)
    row, col = _cell_index(cell, size)
    s = object_px(sc, size)
    return Obj(shape, _COLOR_NAMES[ci], sc, fill, row, col, dx=_jitter(x0, x_hi - x_lo, s),
               dy=_jitter(y0, y_hi - y_lo, s))


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def _jitter(offset: int, cell_len: int, extent: int) -> float:
    half = max(0, (cell_len - extent) // 2)
    return 0.0 if half == 0 else round(max(-1.0, min(1.0, (offset - half) / half)), 3)


def _cell_index(cell: tuple[int, int, int, int], size: int) -> tuple[int, int]:
    e = cell_edges(size)
    return e.index(cell[0]), e.index(cell[2])


@functools.lru_cache(maxsize=32)
def _sign_bank(n: int, size: int) -> tuple[int, int, int, np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Templates of an ``n``-letter sign at each blur, in a window with a margin ``m`` around its box:
    board coverage (B, H, W), border ink (B, H, W), each glyph in each slot (B, n, 26, H, W), and the window
    columns each slot owns. Ink coverage is linear in the font bitmap, so a sign is border + its glyphs."""
    w, h = sign_box(n, size)
    m = int(np.ceil(2.5 * max(BLUR_SIGMAS) * unit(size))) + 1
    _, _, ry, rx = sign_grid(n, size)
    H, W = h + 2 * m, w + 2 * m

    def place(cov: np.ndarray) -> np.ndarray:
        out = np.zeros((H, W), np.float32)
        out[m:m + h, m:m + w] = cov
        return out

    wu, hu = sign_units(n)
    border_bm = np.zeros((hu, wu), np.float32)
    border_bm[:SIGN_BORDER] = border_bm[-SIGN_BORDER:] = 1
    border_bm[:, :SIGN_BORDER] = border_bm[:, -SIGN_BORDER:] = 1
    board = place(np.ones((h, w), np.float32))
    border = place(ry @ border_bm @ rx.T)
    off = SIGN_BORDER + SIGN_PAD
    glyphs = np.zeros((n, len(FONT), H, W), np.float32)
    slots = []
    for i in range(n):
        x = off + i * (GLYPH_W + GLYPH_GAP)
        for g, ch in enumerate(FONT):
            bm = np.zeros((hu, wu), np.float32)
            bm[off:off + GLYPH_H, x:x + GLYPH_W] = FONT[ch]
            glyphs[i, g] = place(ry @ bm @ rx.T)
        cols = np.nonzero(rx[:, x:x + GLYPH_W].sum(1) > 0)[0]
        slots.append((int(cols[0]) + m, int(cols[-1]) + 1 + m))
    sig = [s * unit(size) for s in BLUR_SIGMAS]
    boards = np.stack([_gauss(board, s) for s in sig])
    borders = np.stack([_gauss(border, s) for s in sig])
    gl = np.stack([np.stack([np.stack([_gauss(t, s) for t in slot]) for slot in glyphs]) for s in sig])
    return w, h, m, boards, borders, gl, slots


def _read_sign(patch: np.ndarray, bgp: np.ndarray, signish: np.ndarray, size: int,
               cell: tuple[int, int, int, int]) -> Sign | None:
    """Read a sign by analysis by synthesis: for each letter count, placement near the sign-like pixels and
    blur, model the darkness as background outside the board + border + one glyph per slot (each slot's
    glyph chosen by least absolute error), and keep the best explanation."""
    box = _bbox(signish)
    if box is None:
        return None
    by0, by1, bx0, bx1 = box
    dark = 1.0 - patch.mean(-1) / 255.0
    dbg = 1.0 - bgp.mean(-1) / 255.0
    glyph_names = list(FONT)
    P = 32
    dbgp = np.pad(dbg, P, mode="edge")
    darkp = dbgp.copy()  # outside the cell we see nothing: call it background
    darkp[P:-P, P:-P] = dark
    r0 = np.pad(np.abs(dark - dbg), P)  # error of "just background", to compare windows of any size
    total0 = float(r0.sum())
    best = (np.inf, "", 0, 0, 0, 0)
    for b in range(len(BLUR_SIGMAS)):
        if b > 0 and best[0] < 0.02 * patch.shape[0] * patch.shape[1]:
            break  # a sharp render explained it almost exactly: no need to try blurs
        for n in range(1, TEXT_MAX_LEN + 1):
            w, h, m, boards, borders, gl, slots = _sign_bank(n, size)
            if w > patch.shape[1] + 2 or h > patch.shape[0] + 2:
                continue
            xs = sorted({bx0 + d for d in (-1, 0, 1)} | {bx1 - w + d for d in (-1, 0, 1)})
            ys = sorted({by0 + d for d in (-1, 0, 1)} | {by1 - h + d for d in (-1, 0, 1)})
            for x0 in xs:
                for y0 in ys:
                    sl = (slice(y0 - m + P, y0 + h + m + P), slice(x0 - m + P, x0 + w + m + P))
                    win, wbg = darkp[sl], dbgp[sl]
                    if win.shape != boards.shape[1:]:
                        continue
                    base = win - wbg * (1.0 - boards[b]) - borders[b]  # what the glyphs must explain
                    owned = np.zeros(base.shape[1], bool)
                    err, text = total0 - float(r0[sl].sum()), ""  # everything outside the window: background
                    for i, (c0, c1) in enumerate(slots):
                        e = np.abs(base[None, :, c0:c1] - gl[b, i][:, :, c0:c1]).sum(axis=(1, 2))
                        g = int(np.argmin(e))
                        err += float(e[g])
                        text += glyph_names[g]
                        owned[c0:c1] = True
                    err += float(np.abs(base[:, ~owned]).sum())
                    if err < best[0]:
                        best = (err, text, x0, y0, w, h)
    _, text, x0, y0, w, h = best
    if not text:
        return None
    row, col = _cell_index(cell, size)
    y_lo, y_hi, x_lo, x_hi = cell
    return Sign(text, row, col, dx=_jitter(x0, x_hi - x_lo, w), dy=_jitter(y0, y_hi - y_lo, h))


def parse(image: Any) -> Scene:
    """Read ``image`` (PIL image or (H, W, 3) array, any square size >= 24 px) back into a Scene."""
    arr = _to_array(image)
    size = arr.shape[0]
    bg, ground = _background(arr)
    bgmap = np.empty_like(arr)
    bgmap[:] = BACKGROUNDS[bg]
    if GROUNDS[ground] is not None:
        bgmap[ground_top(size):] = GROUNDS[ground]
    e = cell_edges(size)
    min_px = max(4, int(0.015 * (size / GRID) ** 2))
    frame = max(1, int(round(2 * unit(size))))  # blur spills a little over cell edges; look inside them
    bgdist = np.linalg.norm(arr - bgmap, axis=-1)
    if GROUNDS[ground] is not None:  # a soft horizon: mixtures of sky and ground are background too
        gt = ground_top(size)
        lo, hi = max(0, gt - frame - 1), min(size, gt + frame + 1)
        a, b = np.asarray(BACKGROUNDS[bg], np.float32), np.asarray(GROUNDS[ground], np.float32)
        t = np.clip(((arr[lo:hi] - a) @ (b - a)) / float((b - a) @ (b - a)), 0, 1)
        bgdist[lo:hi] = np.linalg.norm(arr[lo:hi] - (a + t[..., None] * (b - a)), axis=-1)
    objs, signs = [], []
    for r in range(GRID):
        for c in range(GRID):
            cell = (e[r], e[r + 1], e[c], e[c + 1])
            patch = arr[cell[0]:cell[1], cell[2]:cell[3]]
            bgp = bgmap[cell[0]:cell[1], cell[2]:cell[3]]
            fg = bgdist[cell[0]:cell[1], cell[2]:cell[3]] > FG_DIST
            if int(fg[frame:-frame, frame:-frame].sum()) < min_px:  # maybe blur spilling from a neighbour
                box = _bbox(fg)  # ... unless it is a real object hugging the edges (a large outline square)
                if int(fg.sum()) < min_px or box is None or min(box[1] - box[0], box[3] - box[2]) < fg.shape[0] / 3:
                    continue
            ci, resid = _color_fit(patch, bgp, fg)
            # a sign is white board + black ink: achromatic, and no object colour explains it
            achromatic = fg & ((patch.max(-1) - patch.min(-1)) < SIGN_MAX_SATURATION)
            lum, bg_lum = patch.mean(-1), bgp.mean(-1)
            # grey that is brighter than the background, or much darker: board or ink, never an object's edge
            extreme = achromatic & ((lum < bg_lum - 60) | (lum > bg_lum + 15))
            if (achromatic.sum() >= SIGN_MIN_SHARE * fg.sum() and resid > SIGN_MIN_RESIDUAL
                    and extreme.sum() >= min_px):
                signs.append((int(achromatic.sum()), cell, patch, bgp, achromatic))
                continue
            o = _read_object(patch, bgp, ci, size, cell)
            if o is not None:
                objs.append(o)
    sign = None
    if signs:  # the strongest sign-like cell; others are its blur spilling over a cell edge
        _, cell, patch, bgp, achromatic = max(signs, key=lambda t: t[0])
        sign = _read_sign(patch, bgp, achromatic, size, cell)
    return Scene(background=bg, ground=ground, objects=tuple(objs), sign=sign)
