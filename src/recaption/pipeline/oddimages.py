"""A folder of the odd and bad images a recaption job must survive, plus good ones (for tests and demos).

    python -m recaption.pipeline.oddimages OUT_DIR [N_GOOD]

Kinds (file stem -> what it is): ``odd_zero`` zero bytes, ``odd_truncated`` a JPEG cut in half,
``odd_text`` not an image, ``odd_cmyk`` CMYK JPEG, ``odd_16bit`` 16-bit grayscale PNG, ``odd_palette``
palette PNG with a transparent index, ``odd_exif`` JPEG stored 40x20 with EXIF orientation 6 (shown 20x40),
``odd_gray`` 8-bit grayscale PNG, ``odd_animated`` 3-frame GIF, ``odd_bomb`` a 1-bit PNG of 10,000 x 9,000
pixels (over PIL's 89.5 M decompression-bomb limit; a few kB on disk).
"""

from __future__ import annotations

import io
import os
import sys

import numpy as np
from PIL import Image

VALID_ODD = ("odd_cmyk", "odd_16bit", "odd_palette", "odd_exif", "odd_gray", "odd_animated")
ERROR_ODD = ("odd_zero", "odd_text")
EITHER_ODD = ("odd_truncated", "odd_bomb")


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def odd_images() -> dict[str, bytes]:
    """File name -> bytes for the ten kinds."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), "RGB")
    jpeg = _save(rgb, "JPEG", quality=90)
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    pal.paste(1, (4, 4, 12, 12))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    anim = io.BytesIO()
    frames[0].save(anim, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    sixteen = Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16))
    return {
        "odd_zero.png": b"",
        "odd_truncated.jpg": jpeg[: len(jpeg) // 2],
        "odd_text.jpg": b"this is not an image, just some text\n" * 4,
        "odd_cmyk.jpg": _save(Image.new("CMYK", (24, 24), (0, 255, 255, 0)), "JPEG"),
        "odd_16bit.png": _save(sixteen, "PNG"),
        "odd_palette.png": _save(pal, "PNG", transparency=0),
        "odd_exif.jpg": _save(Image.new("RGB", (40, 20), (0, 128, 0)), "JPEG", exif=exif),
        "odd_gray.png": _save(Image.new("L", (20, 20), 128), "PNG"),
        "odd_animated.gif": anim.getvalue(),
        "odd_bomb.png": _save(Image.new("1", (10_000, 9_000), 0), "PNG"),
    }


def make_odd_folder(path: str, n_good: int = 100, seed: int = 0) -> None:
    """Write the ten odd kinds and ``n_good`` good 32 px PNG/JPEG images, each with an alt-text sidecar."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = dict(odd_images())
    for i in range(n_good):
        img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB")
        files[f"good_{i:04d}.{'jpg' if i % 2 else 'png'}"] = _save(img, "JPEG" if i % 2 else "PNG")
    for name, data in files.items():
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
        with open(os.path.join(path, name.rsplit(".", 1)[0] + ".txt"), "w") as f:
            f.write(f"alt text of {name}")


if __name__ == "__main__":
    make_odd_folder(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100)
