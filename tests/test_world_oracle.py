"""The oracle parser reads renders back into exactly the same scene."""

from __future__ import annotations

import numpy as np
import pytest

from recaption.world import Obj, Scene, Sign
from recaption.world.oracle import parse
from recaption.world.render import render, render_array
from recaption.world.sampler import SamplerConfig, sample_scene, scene_rng


def _exact_rate(seed, n, size=64, cfg=SamplerConfig()):
    scenes = [sample_scene(scene_rng(seed, i), cfg) for i in range(n)]
    return sum(parse(render(s, size)).same_as(s) for s in scenes) / n


def test_parser_exact_on_fresh_scenes():
    assert _exact_rate(seed=21, n=300) >= 0.995


def test_parser_exact_on_crowded_scenes_with_signs():
    cfg = SamplerConfig(min_objects=6, max_objects=8, p_sign=1.0, p_ground=0.5)
    assert _exact_rate(seed=22, n=100, cfg=cfg) >= 0.99


@pytest.mark.parametrize("size", [48, 80, 96, 128])
def test_parser_other_sizes(size):
    assert _exact_rate(seed=23, n=40, size=size, cfg=SamplerConfig(p_sign=0.5)) >= 0.97


def test_parser_reads_every_letter_and_every_attribute():
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    for k in range(0, 26, 3):
        s = Scene("gray", "sand", (), Sign(letters[k:k + 3], 1, 1))
        assert parse(render(s)).text == letters[k:k + 3]
    from recaption.world import COLORS, FILLS, SHAPES, SIZES
    for shape in SHAPES:
        for i, (color, size, fill) in enumerate(zip(COLORS, list(SIZES) * 3, FILLS * 2, strict=False)):
            s = Scene("white", "grass", (Obj(shape, color, size, fill, 2, i % 3, 1.0, 1.0),))
            got = parse(render(s))
            assert got.same_as(s), (s, got)


def test_parser_accepts_arrays_and_tolerates_noise():
    s = sample_scene(scene_rng(24, 0), SamplerConfig(min_objects=3, max_objects=3, p_sign=0.0))
    arr = render_array(s)
    assert parse(arr).same_as(s)
    noisy = np.clip(arr.astype(int) + np.random.default_rng(0).integers(-6, 7, arr.shape), 0, 255)
    assert parse(noisy.astype(np.uint8)).same_as(s)


def test_parser_empty_scene():
    s = Scene("black", "none", ())
    got = parse(render(s))
    assert got.same_as(s) and got.objects == ()


@pytest.mark.slow
def test_parser_1000_fresh_scenes():
    assert _exact_rate(seed=25, n=1000) >= 0.995


def test_parser_tolerates_blur():
    from PIL import ImageFilter

    scenes = [sample_scene(scene_rng(26, i), SamplerConfig(p_sign=0.5)) for i in range(60)]
    soft = sum(parse(render(s).filter(ImageFilter.GaussianBlur(0.5))).same_as(s) for s in scenes)
    assert soft / len(scenes) >= 0.95
    shapes = total = 0
    for s in scenes:
        got = {o.cell: o for o in parse(render(s).filter(ImageFilter.GaussianBlur(0.8))).objects}
        for o in s.objects:
            total += 1
            shapes += o.cell in got and (got[o.cell].shape, got[o.cell].color) == (o.shape, o.color)
    assert shapes / total >= 0.95
