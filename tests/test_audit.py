"""The caption audit: world figures against the scene, and general caption statistics."""

from __future__ import annotations

import json

import pytest

from recaption.eval.audit import (
    audit,
    audit_world_caption,
    claimed_texts,
    clip_token_count,
    general_stats,
    is_degenerate,
    parse_mentions,
    world_vocab,
)
from recaption.world import Obj, Scene, Sign, truth_caption
from recaption.world.dataset import generate_records


@pytest.fixture(scope="module")
def records():
    return list(generate_records(150, seed=5))


@pytest.fixture(scope="module")
def vocab():
    return world_vocab()


SCENE = Scene(background="black", objects=(
    Obj("circle", "red", "large", "striped", 0, 0), Obj("circle", "red", "large", "striped", 0, 2),
    Obj("square", "blue", "small", "solid", 2, 1)), sign=Sign("SUN", 1, 1))


def test_true_descriptive_captions_score_perfectly(records):
    rep = audit(records, {r.key: truth_caption(r, "descriptive") for r in records}, mode="descriptive")
    for k in ("object_precision", "object_recall", "attribute_precision", "attribute_recall", "count_accuracy",
              "relation_accuracy", "text_accuracy", "names_main_subjects", "objects_named",
              "size_accuracy_given_object", "fill_accuracy_given_object", "attribute_recall_named"):
        assert rep[k] == 1.0, k
    assert rep["hallucination_rate"] == 0.0 and rep["degenerate_share"] == 0.0
    assert rep["count_claims"] > 0 and rep["relation_claims"] > 0 and rep["text_cases"] > 0


def test_true_short_captions_name_main_subjects_but_not_all_attributes(records):
    rep = audit(records, {r.key: truth_caption(r, "short") for r in records}, mode="short")
    assert rep["names_main_subjects"] == 1.0 and rep["words_max"] <= 20
    assert rep["recall_size"] == 0.0 and rep["attribute_recall"] < 0.6


def test_alt_text_is_a_weak_baseline(records):
    rep = audit(records, {r.key: r.captions["alt"] for r in records})
    assert rep["attribute_recall"] < 0.5 and rep["names_main_subjects"] < 0.5


def test_wrong_details_are_caught(vocab):
    good = audit_world_caption('Two large striped red circles are in the top left and top right. A small solid blue '
                               'square is at the bottom. The red circle in the top left is to the left of the one in '
                               'the top right. A sign reads "SUN".', SCENE, vocab)
    assert good["count_ok"] == good["count_claims"] == 1
    assert good["relation_ok"] == good["relation_claims"] == 1
    assert good["text_ok"] == 1 and good["named_absent"] == 0
    assert good["objects_covered"] == 3 and all(good[f"attr_ok_{a}"] == 3 for a in ("shape", "color", "size", "fill"))
    bad = audit_world_caption('Three large green circles. A small solid blue star. The blue square is above the red '
                              'circle. A sign reads "MOON".', SCENE, vocab)
    assert bad["count_ok"] == 0 and bad["count_claims"] == 1
    assert bad["named_absent"] == 2  # green (no green object), star (no star)
    assert bad["relation_ok"] == 0 and bad["relation_claims"] == 1
    assert bad["text_ok"] == 0 and bad["text_cases"] == 1
    assert bad["main_subjects_ok"] == 1  # red circles, blue square and sign are all named (if wrongly)
    assert audit_world_caption("Two red circles and a sign.", SCENE, vocab)["main_subjects_ok"] == 0
    assert audit_world_caption("Two red circles, a blue square.", SCENE, vocab)["main_subjects_ok"] == 0
    assert audit_world_caption("Red circles, a blue square and a sign.", SCENE, vocab)["main_subjects_ok"] == 1
    # a binding error: every word exists in the scene, but not together
    swap = audit_world_caption("A small solid red square.", SCENE, vocab)
    assert swap["named_absent"] == 0 and swap["attrs_named_ok"] < swap["attrs_named"] and swap["mentions_fit"] == 0


def test_attributes_given_the_object(vocab):
    """A wrong fill uncredits the size beside it in the recalls, but not in the given-object accuracies."""
    from recaption.eval.audit import summarise_world

    row = audit_world_caption("Two large dotted red circles. A small solid blue square. A large green star.",
                              SCENE, vocab)
    assert row["attr_ok_size"] == 1 and row["attr_ok_fill"] == 1  # only the square's mention fits
    assert row["objects_named"] == 3
    assert row["given_total_size"] == 3 and row["given_ok_size"] == 3
    assert row["given_total_fill"] == 3 and row["given_ok_fill"] == 1  # the circles are striped, not dotted
    # read through the naming mentions, the wrong fill costs the circles' fill alone: 3 x (shape, colour, size)
    # and the square's fill, of 3 x 4 (the strict recall credits the square's mention only: 4 of 12)
    assert 2 * row["objects_named"] + row["given_ok_size"] + row["given_ok_fill"] == 10
    assert summarise_world([row])["attribute_recall_named"] == pytest.approx(10 / 12, abs=1e-3)
    assert summarise_world([row])["attribute_recall"] == pytest.approx(4 / 12, abs=1e-3)
    # two objects of one colour and shape: each is right when some mention of that pair states its value
    scene = Scene(background="black", objects=(Obj("circle", "red", "large", "striped", 0, 0),
                                               Obj("circle", "red", "small", "dotted", 0, 2)))
    row = audit_world_caption("A large striped red circle and a small striped red circle.", scene, vocab)
    assert (row["given_ok_size"], row["given_ok_fill"], row["given_total_fill"]) == (2, 1, 2)
    # an object named without colour, or a mention without the attribute, is not judged on it
    row = audit_world_caption("A striped circle. A blue square.", SCENE, vocab)
    assert row["objects_named"] == 1 and row.get("given_total_fill", 0) == row.get("given_total_size", 0) == 0
    rep = summarise_world([audit_world_caption("Two large dotted red circles. A small solid blue square.", SCENE,
                                               vocab)])
    assert rep["objects_named"] == 1.0 and rep["size_accuracy_given_object"] == 1.0
    assert rep["fill_accuracy_given_object"] == pytest.approx(1 / 3, abs=1e-3) and rep["recall_size"] == pytest.approx(
        1 / 3, abs=1e-3)


def test_background_and_ground_colours_are_not_objects(vocab):
    m = parse_mentions("a red circle on a light blue background with a strip of green grass along the bottom", vocab)
    assert [(x.shape, x.attrs) for x in m] == [("circle", {"color": "red"})]


def test_general_stats_boilerplate_degenerate_and_long():
    caps = ["The image depicts a red circle.", "a a a a", "An image of two squares.",
            "red circle red circle red circle", "word " * 90, "A blue star."]
    g = general_stats(caps)
    assert g["boilerplate_share"] == pytest.approx(2 / 6, abs=1e-3)
    assert g["degenerate_share"] == pytest.approx(3 / 6, abs=1e-3)
    assert g["over_77_tokens_share"] == pytest.approx(1 / 6, abs=1e-3)
    assert g["captions"] == 6 and g["words_max"] == 90
    assert not is_degenerate("The red circle is above the blue square. The blue square is left of the star.")
    assert clip_token_count("a red circle, 12") == 2 + 6


def test_clip_token_count_with_a_tokenizer(tmp_path):
    from recaption.clip.tokenizer import train_tokenizer

    tok = train_tokenizer(["a red circle"] * 5, vocab_size=300, lowercase=True)
    assert clip_token_count("a red circle", tok) == len(tok("a red circle")["input_ids"])


def test_claimed_texts():
    assert claimed_texts('A sign reads "SUN".') == {"SUN"}
    assert claimed_texts("a sign that says HI") == {"HI"}
    assert claimed_texts("a red circle") == set()


def test_audit_cli(tmp_path, records):
    from recaption.cli import main
    from recaption.io import open_writer

    data = tmp_path / "data"
    with open_writer(str(data), "folder") as w:
        for r in records[:20]:
            w.write(r)
    caps = tmp_path / "caps.jsonl"
    caps.write_text("".join(json.dumps({"key": r.key, "caption": truth_caption(r, "descriptive"),
                                        "mode": "descriptive", "provenance": {}}) + "\n" for r in records[:20]))
    out = tmp_path / "audit.json"
    with pytest.raises(SystemExit) as e:
        main(["audit", "--input", str(data), "--captions", str(caps), "--out", str(out)])
    assert e.value.code == 0
    rep = json.loads(out.read_text())
    assert rep["mode"] == "descriptive" and rep["matched"] == 20 and rep["attribute_recall"] == 1.0
    assert len(rep["per_caption"]) == 20
