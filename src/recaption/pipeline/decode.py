"""Image bytes -> RGB PIL image for a captioner, or a one-line reason why not.

Valid but odd images are converted the way a person would see them: EXIF orientation applied; CMYK,
grayscale and palette images to RGB; alpha (RGBA, LA, palette with transparency) composited on white;
16-bit and 32-bit integer images scaled to 8 bits (PIL's own convert would clip them to white); the first
frame of an animation. Undecodable ones get a reason whose first word is its category:
``empty``, ``not-an-image``, ``corrupt`` (truncated or broken data), ``too-large`` (over the
decompression-bomb limit). The record's bytes are never changed.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS)


class DecodeError(ValueError):
    """An image that cannot be captioned; ``str(e)`` starts with the category."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / (hi - lo or 1.0) * 255.0
        elif a.max() > 255:
            a = a / 257.0
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def decode_image(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None) -> Image.Image:
    """Decode to an RGB image (EXIF rotation applied); raises :class:`DecodeError` with a reason.

    ``max_side`` (optional) shrinks large images on decode (JPEG draft mode, then a thumbnail), which
    saves time and memory when the captioner works at a small resolution anyway.
    """
    if not data:
        raise DecodeError("empty: zero-byte image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise DecodeError(f"too-large: {w}x{h} = {w * h:,} pixels is over the decompression-bomb "
                                  f"limit of {max_pixels:,}")
            if getattr(img, "is_animated", False):
                img.seek(0)
            if max_side and img.format == "JPEG" and max(w, h) > 2 * max_side:
                img.draft("RGB", (max_side, max_side))
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img)
            if max_side and max(rgb.size) > max_side:
                rgb.thumbnail((max_side, max_side))
            return rgb
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError(f"too-large: {e}") from e
    except UnidentifiedImageError as e:
        raise DecodeError(f"not-an-image: {len(data)} bytes that no image decoder recognises") from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as e:
        raise DecodeError(f"corrupt: {type(e).__name__}: {e}") from e
