"""The world CLIP: trained from scratch on alt-text (never the truth), loadable by load_clip, retrieval figures."""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")

from recaption.captioners.testing import TINY_CLIP, world_records  # noqa: E402
from recaption.clip import load_clip  # noqa: E402
from recaption.clip.data import caption_text, choose_subset, load_pixels, normalize, resolve_size  # noqa: E402
from recaption.clip.tokenizer import train_tokenizer  # noqa: E402
from recaption.clip.train import ClipTrainConfig, retrieval_accuracy, train_clip  # noqa: E402
from recaption.records import RecordError  # noqa: E402


@pytest.fixture(scope="module")
def records():
    return world_records(40, seed=2)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, records):
    from test_captioner_prefix import trapped

    out = str(tmp_path_factory.mktemp("clip"))
    train_clip(trapped(records), out, ClipTrainConfig(**TINY_CLIP))  # alt-text only: meta['world'] never read
    return out


def test_trained_clip_loads_and_matches_training_preprocessing(clip_dir, records):
    enc = load_clip(clip_dir)
    ims = [r.pil() for r in records[:4]]
    f = enc.encode_images(ims)
    assert f.shape == (4, TINY_CLIP["projection_dim"])
    assert torch.allclose(f.norm(dim=-1), torch.ones(4), atol=1e-5)
    g = enc.model.get_image_features(pixel_values=normalize(load_pixels(records[:4], 64)))
    g = torch.nn.functional.normalize(getattr(g, "pooler_output", g), dim=-1)
    assert torch.allclose(f, g, atol=1e-5)  # load_clip's processor == the training path
    t = enc.encode_texts([r.captions["alt"] for r in records[:4]] + ["word " * 100])
    assert t.features.shape == (5, TINY_CLIP["projection_dim"]) and t.truncated == [False] * 4 + [True]
    info = json.load(open(os.path.join(clip_dir, "clip_train.json")))
    assert info["config"]["text_field"] == "alt"
    for k in ("i2t_top1", "i2t_top5", "t2i_top1", "t2i_top5"):
        assert 0.0 <= info["metrics"][k] <= 1.0
    assert info["metrics"]["i2t_top1"] <= info["metrics"]["i2t_top5"]


def test_scoring_clip_reads_the_truth_field(tmp_path, records):
    assert caption_text(records[0], "truth.descriptive") == records[0].meta["world"]["truth"]["descriptive"]
    m = train_clip(records, str(tmp_path / "c"), ClipTrainConfig(**{**TINY_CLIP, "text_field": "truth.descriptive"}))
    assert m["n"] > 0


def test_missing_caption_field_names_the_record(records):
    with pytest.raises(RecordError, match=records[0].key):
        caption_text(records[0], "nope")


def test_retrieval_accuracy():
    f = torch.nn.functional.normalize(torch.randn(10, 8), dim=-1)
    perfect = retrieval_accuracy(f, f)
    assert perfect["i2t_top1"] == perfect["t2i_top5"] == 1.0
    shuffled = retrieval_accuracy(f, f.roll(1, 0))
    assert shuffled["i2t_top1"] == 0.0
    # duplicate texts: retrieving any copy of the right words counts
    dup = retrieval_accuracy(f, f.roll(1, 0), texts=["same"] * 10)
    assert dup["i2t_top1"] == 1.0


def test_subsets_and_sizes():
    keys = [f"k{i}" for i in range(100)]
    a = choose_subset(keys, 5, seed=0)
    assert len(a) == 5 and a == choose_subset(list(reversed(keys)), 5, seed=0)
    assert resolve_size("0.05", 100) == 5 and resolve_size("7", 100) == 7 and resolve_size(0.5, 10) == 5
    assert resolve_size("1.0", 10) == 10 and resolve_size("500", 10) == 10


def test_tokenizer_keeps_eos_off_id_2_and_encodes_anything():
    tok = train_tokenizer(["a red circle", "two blue squares"] * 3, vocab_size=300, lowercase=True)
    assert tok.eos_token_id not in (None, 2)  # id 2 would switch CLIP's text pooling to the legacy rule
    ids = tok("A sign says QZX")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids


@pytest.mark.slow
def test_clip_train_cli(tmp_path, records):
    from recaption.cli import main
    from recaption.io import open_writer

    data = tmp_path / "data"
    with open_writer(str(data), "wds") as w:
        for r in records[:30]:
            w.write(r)
    with pytest.raises(SystemExit) as e:
        main(["clip", "train", "--data", str(data), "--out", str(tmp_path / "clip"), "--steps", "2",
              "--batch-size", "8", "--heldout", "5"])
    assert e.value.code == 0
    assert load_clip(str(tmp_path / "clip")).encode_texts(["a red circle"]).features.shape[0] == 1


class FakeClock:
    """Stands in for the ``time`` module: every reading is ``tick`` seconds after the last."""

    def __init__(self, tick: float):
        self.now, self.tick = 1000.0, tick

    def time(self) -> float:
        self.now += self.tick
        return self.now

    monotonic = time


def test_time_box_stops_early_and_records_the_steps_done(tmp_path, records, monkeypatch):
    import recaption.clip.train as ct

    monkeypatch.setattr(ct, "time", FakeClock(10.0))  # 10 s a reading: a 1-minute box ends after a few steps
    cfg = ClipTrainConfig(**{**TINY_CLIP, "steps": 50, "max_minutes": 1.0})
    m = train_clip(records, str(tmp_path / "clip"), cfg)
    assert 1 <= m["steps"] < 10
    saved = json.load(open(tmp_path / "clip" / "clip_train.json"))
    assert saved["metrics"]["steps"] == m["steps"] and saved["config"]["max_minutes"] == 1.0
    assert load_clip(str(tmp_path / "clip")).encode_texts(["a red circle"]).features.shape[0] == 1


def test_lr_follows_the_time_box_when_it_is_ahead_of_the_steps():
    from recaption.clip.train import _lr

    cfg = ClipTrainConfig(steps=1000, warmup=10, lr=1.0)
    assert _lr(10, cfg) == pytest.approx(1.0)
    assert _lr(10, cfg, spent=0.5) == pytest.approx(0.5)  # half the box used: the cosine is half way
    assert _lr(10, cfg, spent=1.0) == pytest.approx(0.0)
    assert _lr(1000, cfg, spent=0.1) == pytest.approx(0.0)  # the steps ran out first


def test_hard_negatives_are_drawn_and_recorded(tmp_path, records):
    m = train_clip(records, str(tmp_path / "clip"), ClipTrainConfig(**{**TINY_CLIP, "steps": 3,
                                                                        "hard_negatives": "world"}))
    assert m["hard_negatives_per_image"] > 0.3  # most alt-texts name a colour or a shape
    saved = json.load(open(tmp_path / "clip" / "clip_train.json"))
    assert saved["config"]["hard_negatives"] == "world"
    with pytest.raises(ValueError, match="nope.json"):
        train_clip(records, str(tmp_path / "c2"), ClipTrainConfig(**{**TINY_CLIP, "hard_negatives": "nope.json"}))
