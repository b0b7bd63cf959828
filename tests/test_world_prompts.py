"""Prompt suite, constraint language, scene samplers for prompts, and the oracle judge."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from recaption.world import HELD_OUT_COMBOS, Obj, Scene, Sign
from recaption.world.judge import judge, judge_scene
from recaption.world.prompts import (
    CATEGORIES,
    SPLIT_SIZES,
    Prompt,
    PromptError,
    check,
    check_all,
    prompt_suite,
    scene_breaking,
    scene_for,
    validate_constraint,
)
from recaption.world.render import render


def _combos(p: Prompt) -> set[tuple[str, str]]:
    out = set()
    for c in p.constraints:
        for a in ([c] if c["type"] in ("exists", "count") else [c["a"], c["b"]] if c["type"] == "relation" else []):
            if "color" in a and "shape" in a:
                out.add((a["color"], a["shape"]))
    return out


def test_suite_splits_are_disjoint_and_complete():
    val, test = prompt_suite("val"), prompt_suite("test")
    assert len(val) == SPLIT_SIZES["val"] * len(CATEGORIES) and len(test) == SPLIT_SIZES["test"] * len(CATEGORIES)
    assert Counter(p.category for p in test) == {c: SPLIT_SIZES["test"] for c in CATEGORIES}
    assert not {p.text for p in val} & {p.text for p in test}
    key = lambda p: json.dumps(p.constraints, sort_keys=True)  # noqa: E731
    assert not {key(p) for p in val} & {key(p) for p in test}
    ids = [p.id for p in prompt_suite("all")]
    assert len(ids) == len(set(ids))
    assert prompt_suite("test") == test  # fixed


def test_every_prompt_has_valid_json_constraints():
    for p in prompt_suite("all"):
        assert p.constraints
        for c in p.constraints:
            validate_constraint(c)
        assert Prompt.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_unusual_prompts_use_held_out_combos_only_there():
    for p in prompt_suite("all"):
        if p.category == "unusual":
            assert _combos(p) & HELD_OUT_COMBOS
        else:
            assert not _combos(p) & HELD_OUT_COMBOS, p


def test_categories_look_right():
    by = {c: [p for p in prompt_suite("test") if p.category == c] for c in CATEGORIES}
    assert all(any(c["type"] == "count" for c in p.constraints) for p in by["counting"])
    assert all(any(c["type"] == "text" for c in p.constraints) for p in by["text"])
    assert all(any(c["type"] == "relation" or "position" in c for c in p.constraints) for p in by["positional"])
    assert all(len(p.text.split()) >= 25 for p in by["long"])
    singles = [p for p in by["property"] if len(p.constraints) == 1]
    assert singles and all(p.constraints[0]["shape"] not in p.text for p in singles)  # named by property only


def test_bad_constraints_are_named():
    for bad in ({"type": "exists", "shape": "blob"}, {"type": "count", "shape": "star"},
                {"type": "relation", "a": {}, "rel": "near", "b": {}}, {"type": "nope"}):
        with pytest.raises(PromptError):
            validate_constraint(bad)


def test_check_reasons():
    s = Scene("white", "none", (Obj("square", "blue", "large", "solid", 1, 0), Obj("circle", "red", "small", "solid", 1, 2)),
              Sign("SAN", 0, 0))
    ok, why = check(s, {"type": "relation", "a": {"color": "red", "shape": "circle"}, "rel": "left of",
                        "b": {"color": "blue", "shape": "square"}})
    assert not ok and "right" in why
    assert check(s, {"type": "relation", "a": {"color": "red", "shape": "circle"}, "rel": "right of",
                     "b": {"color": "blue", "shape": "square"}})[0]
    ok, why = check(s, {"type": "text", "text": "SUN"})
    assert not ok and "SAN" in why
    assert check(s, {"type": "count", "shape": "circle", "n": 1})[0]
    assert not check(s, {"type": "count", "n": 3})[0]
    assert check(s, {"type": "exists", "color": "blue", "position": "left"})[0]
    assert not check(s, {"type": "background", "color": "black"})[0]


def _rates(prompts, seed):
    rng = random.Random(seed)
    good = bad = 0
    for p in prompts:
        good += judge(render(scene_for(p, rng)), p).correct
        broken, i = scene_breaking(p, rng)
        assert check_all(broken, p.constraints).count(False) == 1
        v = judge(render(broken), p)
        bad += not v.correct
        assert v.correct or not v.results[i].ok
    return good / len(prompts), bad / len(prompts)


def test_judge_on_satisfying_and_broken_scenes():
    good, bad = _rates(prompt_suite("val"), seed=31)
    assert good >= 0.99 and bad >= 0.99


@pytest.mark.slow
def test_judge_on_the_test_split():
    good, bad = _rates(prompt_suite("test"), seed=32)
    assert good >= 0.99 and bad >= 0.99


def test_scene_breaking_can_target_a_constraint():
    p = next(p for p in prompt_suite("test") if p.category == "positional" and len(p.constraints) == 3)
    s, i = scene_breaking(p, random.Random(0), target=2)
    assert i == 2 and check_all(s, p.constraints) == [True, True, False]
    v = judge_scene(s, p)
    assert not v.correct and [r.ok for r in v.results] == [True, True, False]
    assert v.to_dict()["score"] == pytest.approx(2 / 3, abs=1e-3)
