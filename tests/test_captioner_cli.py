"""The captioner commands end to end: clip train -> captioner train (3 stages) -> caption -> audit."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("torch")

from recaption.captioners.testing import world_records  # noqa: E402
from recaption.cli import main  # noqa: E402


def run(args):
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


def world_folder(path, n, seed):
    """``n`` world records written as a folder dataset at ``path``."""
    from recaption.io import open_writer

    with open_writer(str(path), "folder") as w:
        for r in world_records(n, seed=seed):
            w.write(r)
    return path


@pytest.mark.slow
def test_three_stages_caption_and_audit(tmp_path):
    data = world_folder(tmp_path / "data", 24, seed=9)
    assert run(["clip", "train", "--data", str(data), "--out", str(tmp_path / "clip"), "--steps", "2",
                "--batch-size", "8", "--heldout", "4"]) == 0
    assert run(["captioner", "train", "--stage", "alt", "--data", str(data), "--out", str(tmp_path / "alt"),
                "--clip", str(tmp_path / "clip"), "--steps", "2", "--batch-size", "4"]) == 0
    assert run(["captioner", "train", "--stage", "short", "--data", str(data), "--out", str(tmp_path / "m" / "short"),
                "--init", str(tmp_path / "alt"), "--steps", "2", "--finetune-size", "5"]) == 0
    assert run(["captioner", "train", "--stage", "descriptive", "--data", str(data),
                "--out", str(tmp_path / "m" / "descriptive"), "--init", str(tmp_path / "m" / "short"),
                "--steps", "2", "--finetune-size", "0.2"]) == 0
    assert len(json.load(open(tmp_path / "m" / "descriptive" / "finetune_keys.json"))) == 5
    caps = tmp_path / "caps.jsonl"
    assert run(["caption", "--captioner", str(tmp_path / "m"), "--mode", "descriptive", "--input", str(data),
                "--out", str(caps), "--batch-size", "16", "--limit", "10"]) == 0
    lines = [json.loads(x) for x in caps.read_text().splitlines()]
    assert len(lines) == 10 and {x["mode"] for x in lines} == {"descriptive"}
    assert lines[0]["provenance"]["captioner"] == "clip-prefix" and lines[0]["provenance"]["extra"]["stage"] == \
        "descriptive"
    assert run(["audit", "--input", str(data), "--captions", str(caps), "--out", str(tmp_path / "a.json")]) == 0
    rep = json.load(open(tmp_path / "a.json"))
    assert rep["matched"] == 10 and "attribute_recall" in rep
    views = tmp_path / "views.jsonl"  # test-time views reach the decoder and its provenance
    assert run(["caption", "--captioner", str(tmp_path / "m"), "--mode", "descriptive", "--input", str(data),
                "--out", str(views), "--limit", "4", "--views", "3", "--combine", "features"]) == 0
    dec = json.loads(views.read_text().splitlines()[0])["provenance"]["extra"]["decode"]
    assert (dec["views"], dec["combine"]) == (3, "features")
    assert run(["caption", "--captioner", str(tmp_path / "m"), "--mode", "descriptive", "--input", str(data),
                "--out", str(tmp_path / "bad.jsonl"), "--views", "30"]) != 0
    # self-training from the descriptive checkpoint: 6 other records get its captions, the truth stays 5 records
    assert run(["captioner", "train", "--stage", "descriptive", "--data", str(data), "--out", str(tmp_path / "st"),
                "--init", str(tmp_path / "m" / "descriptive"), "--steps", "2", "--finetune-size", "0.2",
                "--self-train", "--self-train-max", "6"]) == 0
    assert json.load(open(tmp_path / "st" / "finetune_keys.json")) == \
        json.load(open(tmp_path / "m" / "descriptive" / "finetune_keys.json"))
    taught = [json.loads(x) for x in (tmp_path / "st" / "self_train_captions.jsonl").read_text().splitlines()]
    assert not {t["key"] for t in taught} & set(json.load(open(tmp_path / "st" / "finetune_keys.json")))
    m = json.load(open(tmp_path / "st" / "captioner.json"))["metrics"]
    assert len(taught) == m["self_train"]["captions"] and m["self_train"]["captions"] + m["self_train"]["empty"] == 6
    assert m["examples"] == 5 + len(taught) and m["true_examples"] == 5


def test_tokenizer_texts_of_a_stage_need_world_records(tmp_path, capsys):
    from PIL import Image

    from recaption.io import open_writer
    from recaption.records import Record, encode_png

    with open_writer(str(tmp_path / "real"), "folder") as w:
        for i in range(3):
            w.write(Record(f"r{i}", image=encode_png(Image.new("RGB", (8, 8))), captions={"alt": "a photo"}))
    assert run(["captioner", "train", "--stage", "alt", "--data", str(tmp_path / "real"), "--out",
                str(tmp_path / "o"), "--clip", str(tmp_path / "none"), "--tokenizer-texts", "short",
                "--finetune-size", "2"]) == 2
    err = capsys.readouterr().err
    assert "--tokenizer-texts short" in err and "pairs" in err


def test_user_errors_are_one_line(tmp_path, capsys):
    assert run(["captioner", "train", "--stage", "short", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--init" in capsys.readouterr().err
    assert run(["caption", "--captioner", str(tmp_path / "none"), "--mode", "short", "--input", str(tmp_path),
                "--out", str(tmp_path / "c.jsonl")]) == 2
    base = ["captioner", "train", "--stage", "alt", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    assert run(base + ["--hflip", "2"]) == 2
    assert "hflip must be a probability" in capsys.readouterr().err
    assert run(base + ["--hflip", "0.5", "--hflip-swap", "left"]) == 2
    assert "hflip_swap" in capsys.readouterr().err
    assert run(base + ["--prefix-grid", "3", "--prefix-pool", "2"]) == 2
    assert "not both" in capsys.readouterr().err
    assert run(base + ["--shift", "-1"]) == 2
    assert "shift must be a whole number" in capsys.readouterr().err
    assert run(base + ["--ema", "1"]) == 2
    assert "ema must be a decay in [0, 1)" in capsys.readouterr().err


@pytest.mark.slow
def test_resnet_clip_and_stage_one_options_reach_the_checkpoint(tmp_path):
    from recaption.captioners.clip_prefix import load_clip_prefix

    data = world_folder(tmp_path / "data", 16, seed=3)
    assert run(["clip", "train", "--data", str(data), "--out", str(tmp_path / "clip"), "--steps", "2",
                "--batch-size", "8", "--heldout", "4", "--vision-arch", "resnet"]) == 0
    assert (tmp_path / "clip" / "conv_clip.json").is_file()
    assert run(["captioner", "train", "--stage", "alt", "--data", str(data), "--out", str(tmp_path / "alt"),
                "--clip", str(tmp_path / "clip"), "--steps", "2", "--batch-size", "4", "--finetune-vision",
                "--prefix-pool", "2", "--vision-lr-scale", "0.25", "--lm-width", "64", "--lm-layers", "3",
                "--lm-heads", "2", "--tokenizer-texts", "descriptive", "--finetune-size", "4", "--hflip", "0.5"]) == 0
    saved = json.load(open(tmp_path / "alt" / "captioner.json"))
    assert saved["train"]["vision_lr_scale"] == 0.25 and saved["train"]["hflip"] == 0.5
    cap = load_clip_prefix(str(tmp_path / "alt"))
    assert cap.cfg.prefix_pool == 2 and cap.cfg.finetune_vision
    lm = cap.model.lm.config
    assert (lm.n_embd, lm.n_layer, lm.n_head) == (64, 3, 2)  # the LM size options reach the model
    from recaption.captioners.train_prefix import finetune_texts, select_examples
    from recaption.clip.data import iter_records
    from recaption.clip.tokenizer import train_tokenizer

    recs = list(iter_records(str(data)))
    later = finetune_texts(recs, ["descriptive"], "4")  # what --tokenizer-texts descriptive added
    plain = train_tokenizer(select_examples(recs, "alt")[1], vocab_size=cap.cfg.vocab_size, add_special=False)
    n = [sum(map(len, t(later, add_special_tokens=False)["input_ids"])) for t in (plain, cap.tokenizer)]
    assert n[1] < 0.9 * n[0], n
    assert (tmp_path / "alt" / "clip" / "conv_clip.json").is_file()  # the tuned ResNet tower travels along
    assert len(cap.caption([r.pil() for r in world_records(2, seed=4)], "short")) == 2


def readme_recipe_module():
    """``bench/readme_recipe.py`` (the script that runs the README's recipe as written), imported."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "bench" / "readme_recipe.py"
    spec = importlib.util.spec_from_file_location("readme_recipe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_recipe_lines_are_read_and_moved_under_the_work_dir():
    rr = readme_recipe_module()
    lines = rr.recipe_lines(rr.readme_lines())
    assert lines[0][:3] == ["recaption", "world", "make"] and lines[-1][:2] == ["recaption", "audit"]
    trains = [x for x in lines if x[1:3] == ["captioner", "train"]]
    assert [x[x.index("--stage") + 1] for x in trains] == ["alt", "short", "descriptive", "descriptive", "short",
                                                          "short"]
    assert not any(x[1] in ("run", "vae", "t2i", "generate", "eval") for x in lines)  # the captioner part only
    moved = rr.relocate(["recaption", "audit", "--input", "data/heldout", "--captions", "desc.jsonl", "--out",
                         "audit.json", "--clip", "/abs/clip"], "W")
    assert moved == ["recaption", "audit", "--input", "W/data/heldout", "--captions", "W/desc.jsonl", "--out",
                     "W/audit.json", "--clip", "/abs/clip"]
    toy = rr.toy(["recaption", "captioner", "train", "--stage", "alt", "--steps", "100000", "--max-minutes", "18"])
    assert toy == ["recaption", "captioner", "train", "--stage", "alt", "--steps", "2", "--max-minutes", "0",
                   "--finetune-size", "4"]


@pytest.mark.slow
def test_the_readme_world_recipe_runs(tmp_path):
    """The README's recipe lines, as written but at toy size (2 steps, no time box), run by bench/readme_recipe.py:
    they reach the checkpoints the README names, with the options it gives, and a rerun skips what is done."""
    from recaption.captioners.clip_prefix import load_clip_prefix

    rr = readme_recipe_module()
    work = tmp_path / "w"
    state = rr.main(["--work", str(work), "--toy", "--in-process"])
    assert all(v["rc"] == 0 for v in state["lines"].values()) and len(state["lines"]) == 13
    desc = json.load(open(work / "ckpt" / "cap-desc" / "captioner.json"))
    assert (desc["train"]["shift"], desc["train"]["ema"], desc["train"]["lr"]) == (2, 0.999, 1e-3)
    short = json.load(open(work / "ckpt" / "cap-short" / "captioner.json"))
    assert (short["train"]["shift"], short["train"]["ema"], short["train"]["vision_lr_scale"]) == (2, 0.999, 1.0)
    cap = load_clip_prefix(str(work / "ckpt" / "cap-desc"))
    assert cap.cfg.prefix_grid == 3 and cap.cfg.finetune_vision and cap.cfg.extra_layers == (1,)
    assert cap.model.lm.config.n_embd == 128 and (work / "ckpt" / "clip" / "conv_clip.json").is_file()
    # the self-training rounds: the descriptive one from the descriptive checkpoint, the short captioner from the
    # self-trained descriptive one and then its own round; each reads the truth of its 4-record subset only
    for name, stage, init in (("cap-desc-st", "descriptive", "cap-desc"), ("cap-short2", "short", "cap-desc-st"),
                              ("cap-short-st", "short", "cap-short2")):
        meta = json.load(open(work / "ckpt" / name / "captioner.json"))
        assert meta["train"]["stage"] == stage and len(json.load(open(work / "ckpt" / name /
                                                                      "finetune_keys.json"))) == 4
        assert meta["train"]["self_train"] == name.endswith("-st")
        if name.endswith("-st"):
            assert meta["metrics"]["self_train"]["teacher"] == str(work / "ckpt" / init)
            assert meta["metrics"]["self_train"]["captions"] + meta["metrics"]["self_train"]["empty"] == 20
    # the README's captions of the 8 held-out scenes and their audits; every trained captioner audited too
    for f in ("desc.jsonl", "short.jsonl"):
        assert len(open(work / f).read().splitlines()) == 8
    assert json.load(open(work / "audit.json"))["matched"] == 8
    assert set(state["audits"]) >= {str(work / "audit.json"), str(work / "audit-short.json")}
    assert len(state["audits"]) == 2 + 7  # + alt in both modes and the five later checkpoints
    assert all("attribute_recall" in v for v in state["audits"].values())
    logs = sorted(os.listdir(work / "logs"))
    again = rr.main(["--work", str(work), "--toy", "--in-process"])  # a rerun finds everything done
    assert again["lines"] == state["lines"] and sorted(os.listdir(work / "logs")) == logs
    # a README whose last line changed: the lines before it are kept, it runs again, and so do the audits
    readme = tmp_path / "README.md"
    readme.write_text(rr.README.read_text().replace("--out audit-short.json", "--out audit-short2.json"))
    changed = rr.main(["--work", str(work), "--toy", "--in-process", "--readme", str(readme)])
    assert [changed["lines"][k] == state["lines"][k] for k in sorted(state["lines"])] == [True] * 12 + [False]
    assert (work / "audit-short2.json").is_file() and str(work / "audit-short.json") not in changed["audits"]
    assert changed["audits"][str(work / "audit.json")] == state["audits"][str(work / "audit.json")]
    assert len(changed["audits"]) == 2 + 7
