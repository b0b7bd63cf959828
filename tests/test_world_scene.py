"""The world's scene graph, sampler and renderer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recaption.world import COLORS, HELD_OUT_COMBOS, Obj, Scene, SceneError, Sign
from recaption.world.render import object_box, render, render_array, sign_origin
from recaption.world.sampler import SamplerConfig, sample_scene, scene_rng


def test_colours_are_far_apart():
    cols = np.array(list(COLORS.values()), float)
    d = np.linalg.norm(cols[:, None] - cols[None], axis=-1)
    assert d[~np.eye(len(cols), dtype=bool)].min() > 60


def test_scene_json_round_trip_and_sorting():
    s = Scene("cream", "grass", (Obj("star", "red", "large", "dotted", 2, 2, 0.5, -0.5),
                                 Obj("circle", "blue", "small", "solid", 0, 1)), Sign("SUN", 1, 1))
    assert [o.position for o in s.objects] == ["top", "bottom right"]  # sorted row-major
    d = json.loads(json.dumps(s.to_dict()))
    assert Scene.from_dict(d) == s
    # position names alone are enough to rebuild a scene
    for o in d["objects"]:
        del o["row"], o["col"]
    assert Scene.from_dict(d).same_as(s)


@pytest.mark.parametrize("bad", [
    lambda: Obj("blob", "red", "large", "solid", 0, 0),
    lambda: Obj("circle", "teal", "large", "solid", 0, 0),
    lambda: Obj("circle", "red", "large", "solid", 3, 0),
    lambda: Sign("TOOLONG", 0, 0),
    lambda: Scene("white", "none", (Obj("circle", "red", "large", "solid", 0, 0),), Sign("HI", 0, 0)),
])
def test_invalid_scenes_raise_clear_errors(bad):
    with pytest.raises(SceneError):
        bad()


def test_sampler_is_deterministic_and_respects_config():
    a = [sample_scene(scene_rng(7, i)) for i in range(200)]
    b = [sample_scene(scene_rng(7, i)) for i in range(200)]
    c = [sample_scene(scene_rng(8, i)) for i in range(200)]
    assert a == b and a != c
    assert all(1 <= len(s.objects) <= 4 for s in a)
    assert any(s.sign for s in a) and any(s.ground != "none" for s in a)
    assert any(max(s.counts().values(), default=0) >= 2 for s in a)  # identical objects occur
    cfg = SamplerConfig(min_objects=5, max_objects=6, p_sign=1.0)
    for i in range(50):
        s = sample_scene(scene_rng(1, i), cfg)
        assert 5 <= len(s.objects) <= 6 and s.sign is not None


def test_held_out_combos_never_sampled():
    for i in range(3000):
        s = sample_scene(scene_rng(3, i))
        assert not any((o.color, o.shape) in HELD_OUT_COMBOS for o in s.objects)


@pytest.mark.parametrize("size", [32, 64, 100, 128, 256])
def test_render_sizes_and_objects_stay_in_their_cells(size):
    for i in range(30):
        s = sample_scene(scene_rng(5, i))
        img = render(s, size)
        assert img.size == (size, size) and img.mode == "RGB"
        edges = [round(k * size / 3) for k in range(4)]
        for o in s.objects:
            x0, y0, side = object_box(o, size)
            assert edges[o.col] <= x0 and x0 + side <= edges[o.col + 1]
            assert edges[o.row] <= y0 and y0 + side <= edges[o.row + 1]
        if s.sign:
            x0, y0, w, h = sign_origin(s.sign, size)
            assert edges[s.sign.col] <= x0 and x0 + w <= edges[s.sign.col + 1]


def test_render_is_deterministic_and_antialiased():
    s = Scene("white", "none", (Obj("circle", "red", "large", "solid", 1, 1),))
    a, b = render_array(s), render_array(s)
    assert np.array_equal(a, b)
    # anti-aliasing: edge pixels are mixtures, neither pure background nor pure red
    px = a.reshape(-1, 3).astype(int)
    pure = (px == [255, 255, 255]).all(1) | (px == list(COLORS["red"])).all(1)
    assert (~pure).sum() > 10
    # nothing drawn outside the centre cell
    mask = np.ones((64, 64), bool)
    mask[21:43, 21:43] = False
    assert (a[mask] == 255).all()


def test_render_rejects_tiny_sizes():
    with pytest.raises(SceneError):
        render(Scene(), 8)
