"""T2I-CompBench BLIP-VQA with a tiny random BLIP built from config; the benchmark's method step by step."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from recaption.eval.compbench import load_prompts, questions, rule_chunks  # noqa: E402


def build_tiny_blip(path, seed: int = 0):
    """The tiny random BLIP VQA of ``recaption.captioners.testing``, loaded back: (model, processor, token ids)."""
    from transformers import BlipForQuestionAnswering, BlipProcessor

    from recaption.captioners.testing import tiny_blip_vqa

    tiny_blip_vqa(str(path), seed=seed)
    proc = BlipProcessor.from_pretrained(str(path))
    return BlipForQuestionAnswering.from_pretrained(str(path)).eval(), proc, dict(proc.tokenizer.get_vocab())


def test_noun_phrase_questions_follow_the_benchmark():
    assert questions("a green bench and a blue bowl") == ["a green bench?", "a blue bowl?"]
    assert rule_chunks("a rectangular piece of lasagna and a round pizza") == ["a rectangular piece", "lasagna",
                                                                               "a round pizza"]
    assert len(questions(" and ".join(f"a red box{i}" for i in range(12)))) == 8  # np_num
    prompts = load_prompts("color")
    assert len(prompts) == 299 + 1 and prompts[0] == "a green bench and a blue bowl"
    assert len(load_prompts("shape")) == 300 and len(load_prompts("texture")) == 300


def _manual_yes_prob(model, proc, ids, image, question):
    """The benchmark's vqa_prob written out on the tiny model's modules (independent of our batching)."""
    px = proc.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    q = proc.tokenizer([question], return_tensors="pt")
    qi = q["input_ids"].clone()
    qi[0, 0] = ids["[ENC]"]
    with torch.no_grad():
        img = model.vision_model(pixel_values=px)[0]
        qe = model.text_encoder(input_ids=qi, attention_mask=q["attention_mask"], encoder_hidden_states=img)[0]
        logits = model.text_decoder(input_ids=torch.tensor([[ids["[DEC]"]]]), encoder_hidden_states=qe,
                                    encoder_attention_mask=q["attention_mask"]).logits[0, 0]
    p = torch.softmax(logits, -1)
    return float(p[ids["yes"]] / (p[ids["yes"]] + p[ids["no"]]))


def test_blip_vqa_score_is_product_of_yes_probs(tmp_path):
    from PIL import Image

    from recaption.eval.compbench import BlipVQA, score_image

    model, proc, ids = build_tiny_blip(tmp_path / "blip")
    vqa = BlipVQA(str(tmp_path / "blip"))
    assert vqa.enc_id == ids["[ENC]"] and vqa.yes_id == ids["yes"]
    im = Image.new("RGB", (40, 40), (0, 200, 30))
    r = score_image(vqa, im, "a green bench and a blue bowl")
    assert r["questions"] == ["a green bench?", "a blue bowl?"]
    manual = [_manual_yes_prob(model, proc, ids, im, q) for q in r["questions"]]
    assert r["yes"] == pytest.approx(manual, abs=1e-5)
    assert r["score"] == pytest.approx(manual[0] * manual[1], abs=1e-6) and 0 < r["score"] < 1


def test_compbench_cli(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from recaption.cli import app

    build_tiny_blip(tmp_path / "blip")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        for s in range(2):
            Image.new("RGB", (32, 32), (80 * i, 40 * s, 100)).save(imgs / f"{i}_{s}.png")
    r = CliRunner().invoke(app, ["eval", "compbench", "--images", str(imgs), "--category", "color", "--blip",
                                 str(tmp_path / "blip"), "--chunker", "rules", "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "out" / "compbench_color.json").read_text())
    assert res["n_images"] == 6 and res["n_prompts"] == 3 and res["chunker"] == "rules"
    per = [v["score"] for v in res["per_image"].values()]
    assert res["score"] == pytest.approx(sum(per) / 6)
    assert res["per_image"]["0_0.png"]["prompt"] == "a green bench and a blue bowl"
    assert "BLIP-VQA" in (tmp_path / "out" / "compbench_color.md").read_text()
