"""NegCLIP hard negatives: one swapped attribute word per word group a caption names, and the loss that uses them."""

from __future__ import annotations

import json
import random
import re

import pytest

from recaption.clip.negatives import HardNegatives, load_word_groups, world_word_groups
from recaption.world.captions import FILL_WORDS


def _diff(a: str, b: str) -> list[tuple[str, str]]:
    wa, wb = re.findall(r"\S+", a), re.findall(r"\S+", b)
    assert len(wa) == len(wb)
    return [(x, y) for x, y in zip(wa, wb, strict=True) if x != y]


def test_world_negatives_swap_one_word_of_each_group_for_another_class():
    neg = HardNegatives(world_word_groups())
    text = "two large stripy red circles on the left"
    rng = random.Random(0)
    outs = neg(text, rng)
    swaps = [_diff(text, o) for o in outs]
    assert all(len(s) == 1 for s in swaps)  # exactly one word changed in each negative
    changed = {s[0][0] for s in swaps}
    assert changed == {"two", "large", "stripy", "red", "circles", "left"}  # one per group named
    for (old, new), in swaps:
        if old == "stripy":  # a synonym of the same fill is no negative
            assert new not in FILL_WORDS["striped"] and any(new in ws for ws in FILL_WORDS.values())
        if old == "circles":
            assert new.endswith("s") and new != "circles"
        if old == "left":
            assert new == "right"
    assert neg("new logo idea!!", rng) == []  # nothing to swap: no negative


def test_negatives_keep_casing_and_whole_words_and_are_seeded():
    neg = HardNegatives(world_word_groups())
    outs = neg("RED STAR", random.Random(1))
    assert all(o.isupper() for o in outs) and len(outs) == 2
    assert neg("Red starfish", random.Random(1))[0].split()[1] == "starfish"  # 'star' inside a word is not swapped
    assert neg("Red circle", random.Random(3)) == neg("Red circle", random.Random(3))
    assert {o.split()[0][0].isupper() for o in neg("Red circle", random.Random(3))} == {True}


def test_word_groups_from_a_file(tmp_path):
    p = tmp_path / "groups.json"
    p.write_text(json.dumps([[["dog", "puppy"], "cat"], ["left", "right"]]))
    groups = load_word_groups(str(p))
    assert groups == ((("dog", "puppy"), ("cat",)), (("left",), ("right",)))
    assert HardNegatives(groups)("a puppy on the left", random.Random(0)) in (
        ["a cat on the left", "a puppy on the right"], ["a puppy on the right", "a cat on the left"])


@pytest.mark.parametrize("content, problem", [("[[\"red\"]]", "at least two classes"), ("{}", "found none"),
                                              ("not json", "not 'world'"), ("[[[\"a\"], []]]", "at least two")])
def test_bad_word_groups_file_is_named(tmp_path, content, problem):
    p = tmp_path / "g.json"
    p.write_text(content)
    with pytest.raises(ValueError, match=problem) as e:
        load_word_groups(str(p))
    assert str(p) in str(e.value)


def test_contrastive_loss_equals_clip_loss_without_negatives_and_pays_for_a_close_negative():
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    from recaption.clip.train import contrastive_loss

    class Toy(torch.nn.Module):  # image i and text i share an embedding; an extra text can sit close to image 0
        def forward(self, input_ids, attention_mask, pixel_values):
            txt = torch.nn.functional.normalize(input_ids.float(), dim=-1)
            img = torch.nn.functional.normalize(pixel_values.float(), dim=-1)
            return SimpleNamespace(logits_per_image=10 * img @ txt.T)

    eye = torch.eye(3)
    base = contrastive_loss(Toy(), eye, None, eye, 3)
    logits = 10 * eye
    t = torch.arange(3)
    clip = (torch.nn.functional.cross_entropy(logits, t) + torch.nn.functional.cross_entropy(logits.T, t)) / 2
    assert float(base) == pytest.approx(float(clip))
    far = contrastive_loss(Toy(), torch.cat([eye, -eye[:1]]), None, eye, 3)
    close = contrastive_loss(Toy(), torch.cat([eye, torch.tensor([[1.0, 0.1, 0.0]])]), None, eye, 3)
    assert float(far) < float(close)  # a negative close to image 0 costs more than one far from it
