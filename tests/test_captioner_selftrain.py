"""Self-training for a fine-tune stage: teacher captions of the other records, truth isolation, resume, errors."""

from __future__ import annotations

import json
import os
import shutil

import pytest

torch = pytest.importorskip("torch")

from recaption.captioners.clip_prefix import ClipPrefixCaptioner, ClipPrefixConfig, load_clip_prefix  # noqa: E402
from recaption.captioners.self_train import CAPTIONS_NAME, read_done, teacher_captions  # noqa: E402
from recaption.captioners.testing import TINY_PREFIX, tiny_clip, world_records  # noqa: E402
from recaption.captioners.train_prefix import CaptionerTrainConfig, train_captioner  # noqa: E402
from recaption.records import Record  # noqa: E402


@pytest.fixture(scope="module")
def records():
    return world_records(24, seed=5)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, records):
    """(alt, descriptive) tiny checkpoints; the descriptive one fine-tuned on 6 records' truth."""
    root = tmp_path_factory.mktemp("st")
    clip = tiny_clip(str(root / "clip"), records)
    train_captioner(records, str(root / "alt"), CaptionerTrainConfig(stage="alt", steps=20, batch_size=8, warmup=1),
                    clip=clip, model_cfg=ClipPrefixConfig(**TINY_PREFIX))
    train_captioner(records, str(root / "desc"), CaptionerTrainConfig(stage="descriptive", steps=20, batch_size=8,
                                                                      warmup=1, finetune_size="6"),
                    init=str(root / "alt"))
    return str(root / "alt"), str(root / "desc")


def test_self_train_reads_only_its_subsets_truth_and_trains_on_the_teachers_captions(tmp_path, ckpts, records,
                                                                                      monkeypatch):
    import recaption.world as world

    read = []
    real = world.truth_caption
    monkeypatch.setattr(world, "truth_caption", lambda r, f="descriptive": read.append(r.key) or real(r, f))
    _, desc = ckpts
    out = tmp_path / "student"
    m = train_captioner(records, str(out), CaptionerTrainConfig(stage="descriptive", steps=3, batch_size=8, warmup=1,
                                                                finetune_size="6", self_train=True), init=desc)
    true = json.load(open(os.path.join(desc, "finetune_keys.json")))
    assert sorted(read) == sorted(true)  # the truth of the other 18 records is never read
    assert json.load(open(out / "finetune_keys.json")) == true
    taught = read_done(str(out / CAPTIONS_NAME))
    assert set(taught) == {r.key for r in records} - set(true)
    # the captions are the teacher's own, greedy, in the stage's mode
    teacher = load_clip_prefix(desc)
    others = [r for r in records if r.key in taught]
    want = dict(zip([r.key for r in others], teacher.caption([r.pil() for r in others], "descriptive"), strict=True))
    assert taught == {k: c for k, c in want.items() if c.strip()}
    assert m["true_examples"] == 6 and m["examples"] == 6 + len(taught)
    assert m["self_train"]["captions"] == len(taught) and m["self_train"]["reused"] == 0
    saved = json.load(open(out / "captioner.json"))["train"]
    assert saved["self_train"] is True


def test_self_train_max_is_a_seeded_choice(tmp_path, ckpts, records):
    _, desc = ckpts
    cfg = CaptionerTrainConfig(stage="descriptive", steps=1, batch_size=8, warmup=1, finetune_size="6",
                               self_train=True, self_train_max=5)
    train_captioner(records, str(tmp_path / "a"), cfg, init=desc)
    train_captioner(list(reversed(records)), str(tmp_path / "b"), cfg, init=desc)
    a, b = (read_done(str(tmp_path / d / CAPTIONS_NAME)) for d in "ab")
    assert len(a) <= 5 and set(a) == set(b)


def test_the_teacher_must_be_a_checkpoint_of_the_stage(tmp_path, ckpts, records):
    alt, _ = ckpts
    cfg = CaptionerTrainConfig(stage="descriptive", steps=1, batch_size=8, warmup=1, finetune_size="6",
                               self_train=True)
    with pytest.raises(ValueError, match="'alt' checkpoint.*already fine-tuned at 'descriptive'"):
        train_captioner(records, str(tmp_path / "x"), cfg, init=alt)
    with pytest.raises(ValueError, match="fine-tune stages"):
        CaptionerTrainConfig(stage="alt", self_train=True)
    with pytest.raises(ValueError, match="self_train_views"):
        CaptionerTrainConfig(stage="short", self_train=True, self_train_views=0)


def test_a_killed_teacher_pass_resumes_without_captioning_twice(tmp_path, ckpts, records, monkeypatch):
    _, desc = ckpts
    ref, _ = teacher_captions(desc, records, "descriptive", str(tmp_path / "ref"), chunk=7)
    lines = (tmp_path / "ref" / CAPTIONS_NAME).read_text().splitlines(keepends=True)
    assert len(lines) == len(ref)
    os.makedirs(tmp_path / "cut")
    with open(tmp_path / "cut" / CAPTIONS_NAME, "w") as f:  # five whole lines, then a write cut in the middle
        f.write("".join(lines[:5]) + lines[5][: len(lines[5]) // 2])
    seen = []
    real = ClipPrefixCaptioner.caption
    monkeypatch.setattr(ClipPrefixCaptioner, "caption", lambda self, imgs, mode: seen.extend(imgs) or
                        real(self, imgs, mode))
    got, stats = teacher_captions(desc, records, "descriptive", str(tmp_path / "cut"), chunk=7)
    assert got == ref and stats["reused"] == 5 and len(seen) == len(records) - 5
    keys = [json.loads(x)["key"] for x in (tmp_path / "cut" / CAPTIONS_NAME).read_text().splitlines()]
    assert len(keys) == len(set(keys)) == len(ref)  # nothing lost, nothing twice
    seen.clear()  # a complete file: nothing to caption, the teacher is not even loaded
    again, stats = teacher_captions("/no/such/teacher", records, "descriptive", str(tmp_path / "cut"))
    assert again == ref and seen == [] and stats["reused"] == len(ref)
    shutil.rmtree(tmp_path / "cut")


def test_a_bad_image_is_recorded_and_the_pass_goes_on(tmp_path, ckpts, records):
    _, desc = ckpts
    bad = Record(key="broken", image=b"not an image", captions={"alt": "x"})
    got, stats = teacher_captions(desc, [bad, *records[:4]], "descriptive", str(tmp_path / "t"))
    assert stats["skipped"] == 1 and "broken" not in got
    assert len(got) + stats["empty"] == 4
