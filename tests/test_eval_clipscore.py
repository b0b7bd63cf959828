"""CLIP score against a direct transformers CLIPModel computation, on a tiny random CLIP built in code."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

WORDS = ("a red blue green circle square triangle on the left right of big small shape with three corners "
         "and picture background white black yellow").split()


def build_tiny_clip(path, max_pos: int = 16, seed: int = 0):
    """A random CLIPModel + WordLevel fast tokenizer + CLIPImageProcessorPil, saved with save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    from tokenizers.processors import TemplateProcessing

    tk.post_processor = TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                  unk_token="<unk>", model_max_length=max_pos)
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=max_pos, bos_token_id=2, eos_token_id=3,
                         pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    model = CLIPModel(cfg)
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(path)
    tok.save_pretrained(path)
    proc.save_pretrained(path)
    return model, tok, proc


def _images(n):
    from PIL import Image, ImageDraw

    out = []
    for i in range(n):
        im = Image.new("RGB", (40, 40), (20 * i, 200 - 30 * i, 90))
        ImageDraw.Draw(im).ellipse((5 + i, 5, 30, 30 - i), fill=(255, 255 - 40 * i, 0))
        out.append(im)
    return out


def _direct(model, tok, proc, images, texts):
    with torch.no_grad():
        px = proc(images=images, return_tensors="pt")["pixel_values"]
        fi = model.get_image_features(pixel_values=px)
        fi = getattr(fi, "pooler_output", fi)
        enc = tok(texts, padding=True, truncation=True, max_length=model.config.text_config.max_position_embeddings,
                  return_tensors="pt")
        ft = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        ft = getattr(ft, "pooler_output", ft)
    cos = torch.nn.functional.cosine_similarity(fi, ft, dim=-1)
    return (100 * cos).tolist()


def test_clipscore_matches_direct_clipmodel(tmp_path):
    from recaption.clip import load_clip
    from recaption.eval.clipscore import aggregate_score, clip_scores

    model, tok, proc = build_tiny_clip(tmp_path / "clip")
    images = _images(4)
    texts = ["a red circle", "a big blue square on the left", "green triangle",
             "a small yellow shape with three corners on the right of the picture"]
    ours, trunc = clip_scores(load_clip(str(tmp_path / "clip")), images, texts)
    direct = _direct(model.eval(), tok, proc, images, texts)
    assert ours == pytest.approx(direct, abs=1e-4)
    assert trunc == [False, False, False, False]
    # torchmetrics' aggregate: mean of 100*cos, clamped at zero
    assert aggregate_score(ours) == pytest.approx(max(sum(direct) / 4, 0.0), abs=1e-4)
    assert aggregate_score([-5.0, -1.0]) == 0.0


def test_clipscore_cli_fields_and_truncation(tmp_path):
    from typer.testing import CliRunner

    from recaption.cli import app

    model, tok, proc = build_tiny_clip(tmp_path / "clip", max_pos=8)
    imgdir = tmp_path / "imgs"
    imgdir.mkdir()
    images = _images(3)
    for i, im in enumerate(images):
        im.save(imgdir / f"k{i}.png")
    long = "a big red circle on the left of a small blue square with three corners"  # > 8 tokens
    rows = [{"key": "k0", "alt": "a red circle", "descriptive": long},
            {"key": "k1", "captions": {"alt": "blue square", "descriptive": "a big blue square"}},
            {"key": "k2", "alt": "green triangle"},  # no descriptive
            {"key": "k9", "alt": "no image for this key"}]
    caps = tmp_path / "caps.jsonl"
    caps.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["eval", "clipscore", "--clip", str(tmp_path / "clip"), "--images", str(imgdir),
                                 "--captions", str(caps), "--fields", "alt,descriptive", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "clipscore.json").read_text())
    assert res["n_images"] == 3 and any("no image" in n for n in res["notes"])
    alt, desc = res["fields"]["alt"], res["fields"]["descriptive"]
    assert alt["n"] == 3 and desc["n"] == 2 and desc["missing"] == 1
    assert desc["truncated"] == 1 and alt["truncated"] == 0
    direct = _direct(model.eval(), tok, proc, [images[0], images[1]], [long, "a big blue square"])
    assert desc["per_pair"]["k0"] == pytest.approx(direct[0], abs=1e-4)
    assert desc["per_pair"]["k1"] == pytest.approx(direct[1], abs=1e-4)
    md = (out / "clipscore.md").read_text()
    assert "truncated at 8 tokens" in md and "descriptive" in md


def test_clipscore_on_world_records_with_truth_fields(tmp_path):
    """`--records SPEC` reads any recaption.io dataset; `truth:descriptive` reads the world's true caption."""
    rio = pytest.importorskip("recaption.io")
    world = pytest.importorskip("recaption.world.dataset")
    from recaption.eval.clipscore import load_pairs, run_clipscore
    from recaption.world import truth_caption

    build_tiny_clip(tmp_path / "clip")
    recs = list(world.generate_records(3, seed=1, size=32))
    with rio.open_writer(str(tmp_path / "ds"), "folder") as w:
        for r in recs:
            w.write(r)
    pairs = load_pairs(["alt", "truth:descriptive"], records=str(tmp_path / "ds"))
    assert pairs.texts["truth:descriptive"] == [truth_caption(r, "descriptive") for r in recs]
    res = run_clipscore(str(tmp_path / "clip"), ["alt", "truth:descriptive"], out_dir=tmp_path / "out",
                        records=str(tmp_path / "ds"), n_boot=50)
    assert res["fields"]["alt"]["n"] == 3 and res["fields"]["truth:descriptive"]["n"] == 3
    assert res["fields"]["truth:descriptive"]["truncated"] >= 1  # world descriptions exceed 16 tokens
