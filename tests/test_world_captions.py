"""Caption writers: alt-text rates (every kind of detail non-zero), true captions cover everything."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from recaption.world.captions import (
    DETAIL_KINDS,
    UNRELATED_TEXTS,
    AltTextConfig,
    alt_text,
    descriptive_caption,
    detail_kinds,
    short_caption,
)
from recaption.world.sampler import sample_scene, scene_rng

N = 3000


@pytest.fixture(scope="module")
def scenes():
    return [sample_scene(scene_rng(11, i)) for i in range(N)]


def test_alt_text_mentions_every_kind_of_detail_at_a_realistic_rate(scenes):
    rng = random.Random(0)
    kinds: Counter[str] = Counter()
    eligible: Counter[str] = Counter()
    for s in scenes:
        kinds.update(detail_kinds(alt_text(s, rng), s))
        eligible.update(["color", "position", "size", "fill", "background"])
        eligible["count"] += any(v > 1 for v in s.counts().values())
        eligible["text"] += s.sign is not None
    rates = {k: kinds[k] / eligible[k] for k in DETAIL_KINDS}
    for k in DETAIL_KINDS:
        assert 0.03 < rates[k] < 0.7, (k, rates)  # never zero, never near-complete
    assert rates["color"] > rates["position"]  # people name colours more often than positions


def test_alt_text_rates_are_configurable(scenes):
    rng = random.Random(1)
    never = AltTextConfig(p_color=0.0, p_unrelated=0.0, p_generic=0.0, p_second=0.0, p_typo=0.0)
    assert not any("color" in detail_kinds(alt_text(s, rng, never), s) for s in scenes[:500])
    always = AltTextConfig(p_unrelated=1.0, p_typo=0.0)
    texts = [alt_text(s, rng, always) for s in scenes[:300]]
    stems = [u.split("{")[0].lower() for u in UNRELATED_TEXTS]
    assert all(any(t.lower().startswith(st) for st in stems) for t in texts)
    with pytest.raises(ValueError):
        AltTextConfig(p_color=1.5)


def test_alt_text_is_human_and_sometimes_unrelated(scenes):
    rng = random.Random(2)
    texts = [alt_text(s, rng) for s in scenes[:1000]]
    assert sum(t == t.lower() for t in texts) > 200 and sum(t[:1].isupper() for t in texts) > 100
    assert sum(t.endswith(("!", "!!", "...", ":)")) for t in texts) > 50
    stems = [u.split("{")[0].lower() for u in UNRELATED_TEXTS if len(u.split("{")[0]) > 3]
    unrelated = sum(any(t.lower().startswith(st) for st in stems) for t in texts)
    assert 50 < unrelated < 250
    assert len(set(texts)) > 400


def test_descriptive_caption_mentions_everything(scenes):
    rng = random.Random(3)
    for s in scenes[:500]:
        d = descriptive_caption(s, rng).lower()
        for o in s.objects:
            assert o.color in d and o.shape in d and o.size in d
        assert s.background in d
        if s.sign:
            assert f'"{s.sign.text.lower()}"' in d
        if s.ground != "none":
            assert s.ground in d
        if len(s.objects) > 1:
            assert any(w in d for w in ("left of", "right of", "above", "below"))
        assert {"color", "size", "fill", "position", "background"} <= detail_kinds(d, s)


def test_short_caption_names_main_subjects_only(scenes):
    rng = random.Random(4)
    for s in scenes[:500]:
        t = short_caption(s, rng).lower()
        for o in s.objects:
            assert o.color in t and o.shape in t
        assert not any(w in t for w in ("small", "medium", "large", "background", "striped", "top", "bottom"))


def test_true_captions_vary_in_phrasing(scenes):
    s = next(s for s in scenes if len(s.objects) == 2)
    texts = {descriptive_caption(s, random.Random(i)) for i in range(30)}
    assert len(texts) > 10
