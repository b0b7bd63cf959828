"""Caption blending: spec parsing, drawn rates, determinism, fallback counting, checkpointable counts."""

from __future__ import annotations

import numpy as np
import pytest

from recaption.t2i.blend import BlendSpec, BlendSpecError, CaptionBlender


def test_parse_and_describe():
    spec = BlendSpec.parse("descriptive=0.95, alt=0.05", cfg_dropout=0.2)
    assert spec.fields == ("descriptive", "alt")
    assert spec.probs == (0.95, 0.05)
    assert spec.cfg_dropout == 0.2
    assert spec.columns == ("descriptive", "alt", "alt")
    assert BlendSpec.parse(spec.describe(), cfg_dropout=0.2) == spec
    assert BlendSpec.parse("alt").probs == (1.0,)


@pytest.mark.parametrize("text, needle", [
    ("descriptive=0.9,alt=0.05", "sum to 1"),
    ("descriptive=0.95,alt=x", "not a probability"),
    ("", "names no caption field"),
    ("=0.5,alt=0.5", "empty field name"),
    ("alt=0.5,alt=0.5", "twice"),
    ("descriptive=1.5,alt=-0.5", "[0, 1]"),
])
def test_parse_errors_name_the_problem(text, needle):
    with pytest.raises(BlendSpecError, match=None) as e:
        BlendSpec.parse(text)
    assert needle in str(e.value)


def test_bad_cfg_dropout():
    with pytest.raises(BlendSpecError, match="cfg dropout"):
        BlendSpec.parse("alt=1", cfg_dropout=1.0)


def test_rates_over_100k_draws_match_the_settings():
    spec = BlendSpec.parse("descriptive=0.95,alt=0.05", cfg_dropout=0.1)
    b = CaptionBlender(spec, seed=123)
    table = np.tile(np.array([[1, 2, 2]]), (100, 1))  # every record has both captions
    for step in range(1000):  # 1000 batches of 100 = 100,000 draws
        b.choose_ids(table, step)
    r = b.rates()
    assert b.counts["total"] == 100_000
    assert abs(r["drawn/descriptive"] - 0.95) < 0.005
    assert abs(r["drawn/alt"] - 0.05) < 0.005
    assert abs(r["dropped"] - 0.10) < 0.005
    assert r["fallback"] == 0.0


def test_draws_depend_only_on_seed_and_step():
    spec = BlendSpec.parse("short=0.3,descriptive=0.5,alt=0.2")
    a, b = CaptionBlender(spec, seed=7), CaptionBlender(spec, seed=7)
    for step in range(5):  # a draws steps 0..4; b only draws step 4 (as a resumed run would)
        da = a.draw(step, 64)
    db = b.draw(4, 64)
    assert np.array_equal(da.field, db.field) and np.array_equal(da.dropped, db.dropped)
    other = CaptionBlender(spec, seed=8).draw(4, 64)
    assert not np.array_equal(da.field, other.field)
    assert not np.array_equal(a.draw(4, 64, rank=1).field, da.field)  # each process draws its own


def test_missing_synthetic_caption_falls_back_to_alt_and_is_counted():
    spec = BlendSpec.parse("descriptive=1.0", cfg_dropout=0.0)
    b = CaptionBlender(spec, seed=0)
    caps = [{"alt": "a0", "descriptive": "d0"}, {"alt": "a1"}, {}]
    assert b.choose(caps, step=0) == ["d0", "a1", ""]
    assert b.counts["fallback"] == 2 and b.counts["missing"] == 1
    # the id form gives the same answer
    b2 = CaptionBlender(spec, seed=0)
    table = np.array([[3, 1], [-1, 2], [-1, -1]])
    assert b2.choose_ids(table, step=0).tolist() == [3, 2, 0]
    assert b2.counts == b.counts


def test_choose_and_choose_ids_agree_with_dropout():
    spec = BlendSpec.parse("descriptive=0.6,alt=0.4", cfg_dropout=0.3)
    texts = ["", "alt-0", "desc-0", "alt-1", "desc-1"]
    caps = [{"alt": "alt-0", "descriptive": "desc-0"}, {"alt": "alt-1", "descriptive": "desc-1"}] * 20
    table = np.array([[2, 1, 1], [4, 3, 3]] * 20)
    for step in range(3):
        s = CaptionBlender(spec, seed=5).choose(caps, step)
        i = CaptionBlender(spec, seed=5).choose_ids(table, step)
        assert s == [texts[k] for k in i]


def test_state_round_trip_and_mismatch():
    spec = BlendSpec.parse("descriptive=0.95,alt=0.05")
    a = CaptionBlender(spec, seed=1)
    a.choose_ids(np.array([[1, 2, 2]] * 10), step=0)
    b = CaptionBlender(spec, seed=1)
    b.load_state_dict(a.state_dict())
    assert b.counts == a.counts
    with pytest.raises(BlendSpecError, match="does not match"):
        CaptionBlender(spec, seed=2).load_state_dict(a.state_dict())
