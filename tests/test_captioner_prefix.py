"""The clip-prefix captioner: training stages, truth isolation, loss masking, resume, decoding, loading."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

torch = pytest.importorskip("torch")

from recaption.captioners import Captioner, CaptionerError, load_captioner  # noqa: E402
from recaption.captioners.clip_prefix import (  # noqa: E402
    ClipPrefixConfig,
    DecodeConfig,
    ModeRouter,
    load_clip_prefix,
)
from recaption.captioners.testing import TINY_PREFIX, tiny_clip, world_records  # noqa: E402
from recaption.captioners.train_prefix import (  # noqa: E402
    CaptionerTrainConfig,
    select_examples,
    train_captioner,
)
from recaption.records import Record  # noqa: E402


class TrapMeta(dict):
    """A meta dict that fails the test when anything reads its 'world' entry (the truth)."""

    def __getitem__(self, k):
        if k == "world":
            raise AssertionError("meta['world'] was read")
        return super().__getitem__(k)

    def get(self, k, default=None):
        if k == "world":
            raise AssertionError("meta['world'] was read")
        return super().get(k, default)

    def __contains__(self, k):
        if k == "world":
            raise AssertionError("meta['world'] was read")
        return super().__contains__(k)


def trapped(records):
    return [Record(key=r.key, image=r.image, captions=dict(r.captions), meta=TrapMeta(r.meta)) for r in records]


@pytest.fixture(scope="module")
def records():
    return world_records(40, seed=11)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, records):
    return tiny_clip(str(tmp_path_factory.mktemp("clip")), records)


def _alt(out, records, clip_dir, steps=4, **train):
    return train_captioner(records, str(out), CaptionerTrainConfig(stage="alt", steps=steps, batch_size=8, warmup=1,
                                                                   **train),
                           clip=clip_dir, model_cfg=ClipPrefixConfig(**TINY_PREFIX))


@pytest.fixture(scope="module")
def alt_dir(tmp_path_factory, records, clip_dir):
    out = tmp_path_factory.mktemp("alt")
    _alt(out, trapped(records), clip_dir)  # stage 1 must never touch the truth
    return str(out)


def test_stage1_trains_saves_and_loads_without_reading_truth(alt_dir, records):
    meta = json.load(open(os.path.join(alt_dir, "captioner.json")))
    assert meta["kind"] == "clip-prefix" and meta["model"]["stage"] == "alt"
    assert meta["train"]["stage"] == "alt" and meta["metrics"]["examples"] == len(records)
    for f in ("model.safetensors", "lm_config.json", "tokenizer/tokenizer.json", "clip/config.json", "train_state.pt"):
        assert os.path.exists(os.path.join(alt_dir, f)), f
    from safetensors import safe_open

    with safe_open(os.path.join(alt_dir, "model.safetensors"), "pt") as f:  # config inside too
        assert json.loads(f.metadata()["captioner"])["stage"] == "alt"
    cap = load_captioner(alt_dir)
    assert isinstance(cap, Captioner)
    out = cap.caption([r.pil() for r in records[:3]], "short")
    assert len(out) == 3 and all(isinstance(c, str) for c in out)
    # the alt baseline answers any mode, and says which stage wrote it
    assert cap.provenance("descriptive").extra["stage"] == "alt"


@pytest.mark.parametrize("size,expect", [("0.25", 10), ("7", 7), (0.1, 4)])
def test_finetune_subset_is_exact_seeded_and_only_its_truth_is_read(records, monkeypatch, size, expect):
    import recaption.world as world

    read = []
    real = world.truth_caption
    monkeypatch.setattr(world, "truth_caption", lambda r, f="descriptive": read.append(r.key) or real(r, f))
    chosen, texts = select_examples(records, "descriptive", size, seed=3)
    assert len(chosen) == expect and sorted(read) == sorted(r.key for r in chosen)
    assert texts == [real(r, "descriptive") for r in chosen]
    again, _ = select_examples(list(reversed(records)), "descriptive", size, seed=3)
    assert {r.key for r in again} == {r.key for r in chosen}  # order of the data does not matter
    other, _ = select_examples(records, "descriptive", size, seed=4)
    assert {r.key for r in other} != {r.key for r in chosen}


def test_stage1_select_reads_alt_only(records):
    chosen, texts = select_examples(trapped(records), "alt")
    assert texts == [r.captions["alt"] for r in records]


def test_finetune_stage_writes_subset_and_refuses_other_mode(tmp_path, alt_dir, records):
    out = tmp_path / "desc"
    m = train_captioner(records, str(out), CaptionerTrainConfig(stage="descriptive", steps=3, batch_size=8, warmup=1,
                                                                finetune_size="6"), init=alt_dir)
    assert m["examples"] == 6
    assert len(json.load(open(out / "finetune_keys.json"))) == 6
    cap = load_captioner(str(out))
    assert cap.stage == "descriptive"
    with pytest.raises(CaptionerError, match="descriptive"):
        cap.caption([records[0].pil()], "short")
    # a directory with short/ + descriptive/ routes each mode to its checkpoint
    os.makedirs(tmp_path / "both")
    os.symlink(out, tmp_path / "both" / "descriptive")
    os.symlink(alt_dir, tmp_path / "both" / "short")
    router = load_captioner(str(tmp_path / "both"))
    assert isinstance(router, ModeRouter)
    assert len(router.caption([records[0].pil()], "descriptive")) == 1


def test_finetune_needs_init(tmp_path, records):
    with pytest.raises(ValueError, match="--init"):
        train_captioner(records, str(tmp_path / "x"), CaptionerTrainConfig(stage="short", steps=1))


def test_pairs_file_replaces_truth(tmp_path, alt_dir, records):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"key": r.key, "caption": "a user caption"}) + "\n" for r in records[:5]))
    chosen, texts = select_examples(trapped(records), "short", pairs={r.key: "x" for r in records[:5]})
    assert len(chosen) == 5
    m = train_captioner(trapped(records), str(tmp_path / "s"), CaptionerTrainConfig(stage="short", steps=2,
                                                                                    batch_size=4, warmup=1),
                        init=alt_dir, pairs=str(pairs))
    assert m["examples"] == 5


def test_loss_is_masked_on_padding(alt_dir):
    cap = load_clip_prefix(alt_dir)
    model = cap.model.eval()
    feats = torch.randn(2, 1 + (64 // 8) ** 2, model.proj[0].normalized_shape[0])
    ids = torch.randint(4, 50, (2, 9))
    lengths = torch.tensor([5, 9])
    a = model.loss(feats, ids, lengths)
    ids2 = ids.clone()
    ids2[0, 5:] = torch.randint(4, 50, (4,))  # change only padding positions of row 0
    b = model.loss(feats, ids2, lengths)
    assert torch.allclose(a, b)
    ids3 = ids.clone()
    ids3[0, 2] = (ids[0, 2] + 1) % 50 + 4  # a real token changes the loss
    assert not torch.allclose(a, model.loss(feats, ids3, lengths))


def killed_at_step_5(monkeypatch, run) -> None:
    """Call ``run`` with a simulated crash in its 5th step (at the gradient clip); the real clip is restored after."""
    real, calls = torch.nn.utils.clip_grad_norm_, {"n": 0}

    def crash_at_5(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", real)


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, records, clip_dir, monkeypatch):
    _alt(tmp_path / "straight", records, clip_dir, steps=6, save_every=3)
    killed_at_step_5(monkeypatch, lambda: _alt(tmp_path / "resumed", records, clip_dir, steps=6, save_every=3))
    m = _alt(tmp_path / "resumed", records, clip_dir, steps=6, save_every=3)
    assert m["resumed_from"] == 3
    a = load_clip_prefix(str(tmp_path / "straight")).model.state_dict()
    b = load_clip_prefix(str(tmp_path / "resumed")).model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.fixture(scope="module")
def cap(alt_dir):
    return load_clip_prefix(alt_dir)


@pytest.fixture(scope="module")
def feats(cap, records):
    from recaption.captioners.clip_prefix import clip_features
    from recaption.clip.data import load_pixels

    return clip_features(cap.clip, load_pixels(records[:6], 64), cap.cfg)


def test_greedy_is_deterministic_and_batching_does_not_change_it(cap, feats):
    d = DecodeConfig(max_new_tokens=12)
    a = cap.caption_features(feats, d)
    assert a == cap.caption_features(feats, d)
    assert a == cap.caption_features(feats, dataclasses.replace(d, batch_size=1))


def test_nucleus_sampling_is_seeded_and_top_p_shapes_the_distribution(cap, feats):
    f = feats[:1].expand(24, -1, -1)  # one image, 24 samples
    d = DecodeConfig(strategy="nucleus", top_p=1.0, max_new_tokens=8, seed=1)
    wide = cap.caption_features(f, d)
    assert wide == cap.caption_features(f, d)  # same seed, same samples
    assert wide != cap.caption_features(f, dataclasses.replace(d, seed=2))
    narrow = cap.caption_features(f, dataclasses.replace(d, top_p=1e-6))
    greedy = cap.caption_features(feats[:1], DecodeConfig(max_new_tokens=8))
    assert set(narrow) == set(greedy)  # top-p -> 0 keeps only the most likely token
    assert len(set(wide)) > len(set(narrow))


def _has_repeat(ids, n):
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) != len(set(grams))


def test_beam_max_length_and_repetition_guard(cap, feats):
    beam = cap.caption_features(feats, DecodeConfig(strategy="beam", num_beams=3, max_new_tokens=6))
    assert len(beam) == len(feats)
    assert all(len(ids) <= 5 for ids in cap.generate_ids(feats, DecodeConfig(max_new_tokens=5)))
    loose = cap.generate_ids(feats, DecodeConfig(max_new_tokens=40, no_repeat_ngram_size=0))
    guarded = cap.generate_ids(feats, DecodeConfig(max_new_tokens=40, no_repeat_ngram_size=2))
    assert any(_has_repeat(ids, 2) for ids in loose)  # a barely trained model loops...
    assert not any(_has_repeat(ids, 2) for ids in guarded)  # ...and the guard stops it


def test_view_offsets_and_the_repetition_guard_of_the_view_decoder():
    from recaption.captioners.clip_prefix import banned_tokens, view_offsets

    assert view_offsets(1) == [(0, 0)]
    assert view_offsets(5) == [(0, 0), (-1, 0), (0, -1), (0, 1), (1, 0)]
    assert len(set(view_offsets(25, radius=2))) == 25
    with pytest.raises(ValueError, match="views"):
        view_offsets(10, radius=1)
    seq = [1, 2, 3, 1, 2]
    assert banned_tokens(seq, 3) == {3}  # "1 2" was followed by 3
    assert banned_tokens(seq, 2) == {3}  # "2" was followed by 3
    assert banned_tokens(seq, 1) == {1, 2, 3}
    assert banned_tokens(seq, 0) == set() and banned_tokens([1], 3) == set()
    for bad in (dict(views=0), dict(views=10), dict(combine="vote"), dict(views=2, strategy="beam")):
        with pytest.raises(ValueError):
            DecodeConfig(**bad)


@pytest.mark.parametrize("ngram", [0, 2, 8])
def test_the_view_decoder_with_one_view_writes_what_generate_writes(cap, feats, ngram):
    d = DecodeConfig(max_new_tokens=30, no_repeat_ngram_size=ngram, batch_size=4)
    ref = cap.generate_ids(feats, d)
    assert cap.generate_ids_views(feats[:, None], d) == ref  # its own loop and KV cache, the same tokens
    assert cap.generate_ids_views(feats[:, None].expand(-1, 3, -1, -1), d) == ref  # identical views: one view


def test_the_view_decoder_reads_the_mean_of_the_views_probabilities(cap, feats):
    lm = cap.model.lm
    tok = cap.tokenizer
    two = torch.stack([feats[0], feats[1]])[None]  # one "image" whose views are two different images
    first = cap.generate_ids_views(two, DecodeConfig(max_new_tokens=1, no_repeat_ngram_size=0))[0]
    with torch.no_grad():
        pre = cap.model.prefix(two[0])
        bos = lm.get_input_embeddings()(torch.full((2, 1), tok.bos_token_id))
        p = lm(inputs_embeds=torch.cat([pre, bos], dim=1)).logits[:, -1].softmax(-1)
    want = int(p.mean(0).argmax())
    assert first == ([] if want == tok.eos_token_id else [want])
    nucleus = DecodeConfig(strategy="nucleus", top_p=1e-6, max_new_tokens=10, seed=3)
    assert cap.generate_ids_views(two, nucleus) == cap.generate_ids_views(two, DecodeConfig(max_new_tokens=10))
    wide = dataclasses.replace(nucleus, top_p=1.0)
    f = two.expand(12, -1, -1, -1)
    assert cap.generate_ids_views(f, wide) == cap.generate_ids_views(f, wide)  # seeded
    assert len({tuple(x) for x in cap.generate_ids_views(f, wide)}) > 1


def test_caption_with_views_reads_the_moved_images(cap, records, monkeypatch):
    from recaption.captioners import clip_prefix as cp
    from recaption.captioners.train_prefix import shift_images
    from recaption.clip.data import load_pixels

    images = [r.pil() for r in records[:4]]
    d = DecodeConfig(max_new_tokens=12, views=3)
    seen = []
    real = cp.clip_features
    monkeypatch.setattr(cp, "clip_features", lambda enc, px, cfg, bs=256: seen.append(px) or real(enc, px, cfg, bs))
    a = cap.caption(images, "short", d)
    assert a == cap.caption(images, "short", d) and len(a) == 4
    px = load_pixels(records[:4], 64)
    assert len(seen) == 6 and torch.equal(seen[0], px)
    assert torch.equal(seen[1], shift_images(px, torch.tensor([[-1, 0]] * 4)))
    monkeypatch.setattr(cp, "clip_features", real)
    vf = cp.view_features(cap.clip, px, cap.cfg, cp.view_offsets(3))
    assert cap.caption(images, "short", dataclasses.replace(d, combine="features")) == \
        cap.caption_features(vf.mean(1), d)
    assert cap.caption(images, "short", DecodeConfig(max_new_tokens=12, views=1)) == \
        cap.caption_features(vf[:, 0], d)


def test_views_reach_every_model_of_a_job_and_other_captioners_refuse_them(alt_dir):
    from recaption.captioners.clip_prefix import set_decode
    from recaption.pipeline import RunConfig, load_captioner_for
    from recaption.pipeline.fake import HashCaptioner

    job = load_captioner_for(RunConfig(input="in", output="out", captioner=alt_dir, modes=("short",), views=25,
                                       combine="features", view_shift=2))
    assert (job.decode.views, job.decode.combine, job.decode.view_shift) == (25, "features", 2)
    assert load_captioner_for(RunConfig(input="in", output="out", captioner=alt_dir, modes=("short",))).decode.views == 1
    router = ModeRouter({"short": load_clip_prefix(alt_dir), "descriptive": load_clip_prefix(alt_dir)})
    assert all(c.decode.views == 5 for c in set_decode(router, views=5).captioners.values())
    other = HashCaptioner()
    assert set_decode(other, views=1) is other
    with pytest.raises(ValueError, match="only clip-prefix"):
        set_decode(other, views=2)


def test_bad_mode_and_strategy(cap, feats, records):
    with pytest.raises(ValueError, match="mode"):
        cap.caption([records[0].pil()], "long")
    with pytest.raises(ValueError, match="strategy"):
        cap.caption_features(feats, DecodeConfig(strategy="psychic"))


def test_frozen_clip_is_kept_and_tuned_clip_is_saved(tmp_path, records, clip_dir, alt_dir):
    from safetensors.torch import load_file

    def vision(d):
        return {k: v for k, v in load_file(os.path.join(d, "model.safetensors")).items() if "vision_model" in k}

    base = vision(clip_dir)
    train_captioner(records, str(tmp_path / "frozen"), CaptionerTrainConfig(stage="alt", steps=2, batch_size=8),
                    clip=clip_dir, model_cfg=ClipPrefixConfig(**{**TINY_PREFIX, "finetune_vision": False,
                                                                 "prefix_len": 0}))
    frozen = vision(str(tmp_path / "frozen" / "clip"))
    assert all(torch.equal(base[k], frozen[k]) for k in base)
    tuned = vision(os.path.join(alt_dir, "clip"))  # TINY_PREFIX tunes the vision tower
    assert any(not torch.equal(base[k], tuned[k]) for k in base)
    assert len(load_captioner(str(tmp_path / "frozen")).caption([records[0].pil()], "short")) == 1


def test_time_box_saves_a_resumable_checkpoint(tmp_path, records, clip_dir, monkeypatch):
    from test_clip_train import FakeClock

    import recaption.captioners.train_prefix as tp

    real_time = tp.time
    monkeypatch.setattr(tp, "time", FakeClock(10.0))  # a 1-minute box ends after a few steps
    m = _alt(tmp_path / "boxed", records, clip_dir, steps=40, max_minutes=1.0, save_every=0)
    assert 1 <= m["steps"] < 10
    state = torch.load(tmp_path / "boxed" / "train_state.pt", weights_only=False)
    assert state["step"] == m["steps"]
    monkeypatch.setattr(tp, "time", real_time)
    m2 = _alt(tmp_path / "boxed", records, clip_dir, steps=40, save_every=0)  # a later run finishes the steps
    assert m2["resumed_from"] == m["steps"] and m2["steps"] == 40


def test_lr_follows_the_time_box():
    from recaption.captioners.train_prefix import _lr

    cfg = CaptionerTrainConfig(stage="alt", steps=1000, warmup=10, lr=1.0).resolved()
    assert _lr(10, cfg) == pytest.approx(1.0)
    assert _lr(10, cfg, spent=1.0) == pytest.approx(0.1)  # the floor: 10% of the peak
    assert _lr(10, cfg, spent=0.5) == pytest.approx(0.55)


def test_recon_head_decodes_any_grid_to_the_image_size():
    from recaption.captioners.train_prefix import recon_head

    for grid in (8, 4, 3):
        head = recon_head(dim=12, grid=grid, size=64)
        assert head(torch.randn(2, 12, grid, grid)).shape == (2, 3, 64, 64)


def test_recon_loss_is_zero_only_for_the_image_and_weighs_texture():
    from recaption.captioners.train_prefix import recon_loss

    stripes = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    stripes[..., ::2] = 255
    exact = stripes.float() / 127.5 - 1
    assert float(recon_loss(exact, stripes)) == pytest.approx(0.0, abs=1e-6)
    flat = torch.zeros_like(exact)  # the stripes' mean: right on average, no texture
    plain = float(torch.nn.functional.l1_loss(flat, exact) + torch.nn.functional.mse_loss(flat, exact))
    assert float(recon_loss(flat, stripes)) > plain + 0.5  # the finite differences add the missing edges


def test_reconstruction_loss_tunes_the_tower_and_resumes_exactly(tmp_path, records, clip_dir, monkeypatch):
    from safetensors.torch import load_file

    plain = _alt(tmp_path / "plain", records, clip_dir, steps=4)
    m = _alt(tmp_path / "recon", records, clip_dir, steps=4, recon_weight=1.0, recon_batch=4)
    assert m["final_recon_loss"] > 0 and "final_recon_loss" not in plain
    state = torch.load(tmp_path / "recon" / "train_state.pt", weights_only=False)
    assert state["recon_head"]  # the head is training state, not part of the saved captioner
    assert (tmp_path / "recon" / "recon_head.safetensors").is_file()
    train_captioner(records, str(tmp_path / "short"),  # lr ~0: the head it saves is the head it started from
                    CaptionerTrainConfig(stage="short", steps=1, batch_size=8, warmup=1, finetune_size=8, lr=1e-12,
                                         recon_weight=1.0, recon_batch=4), init=str(tmp_path / "recon"))
    h1, h2 = (load_file(str(tmp_path / d / "recon_head.safetensors")) for d in ("recon", "short"))
    assert all(torch.allclose(h1[k], h2[k], atol=1e-7) for k in h1)  # the next stage starts from the trained head
    a = load_file(str(tmp_path / "plain" / "clip" / "model.safetensors"))
    b = load_file(str(tmp_path / "recon" / "clip" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a if "vision_model" in k)  # the loss reached the tower
    assert load_clip_prefix(str(tmp_path / "recon")).model.state_dict().keys() == \
        load_clip_prefix(str(tmp_path / "plain")).model.state_dict().keys()

    # killed after step 3 and resumed: the same weights as 6 steps straight (the head's state is restored)
    _alt(tmp_path / "straight", records, clip_dir, steps=6, save_every=3, recon_weight=1.0, recon_batch=4)
    killed_at_step_5(monkeypatch, lambda: _alt(tmp_path / "resumed", records, clip_dir, steps=6, save_every=3,
                                               recon_weight=1.0, recon_batch=4))
    assert _alt(tmp_path / "resumed", records, clip_dir, steps=6, save_every=3, recon_weight=1.0,
                recon_batch=4)["resumed_from"] == 3
    for part in ("model.safetensors", "clip/model.safetensors"):
        x, y = load_file(str(tmp_path / "straight" / part)), load_file(str(tmp_path / "resumed" / part))
        assert all(torch.allclose(x[k], y[k], atol=1e-6) for k in x)


def test_reconstruction_needs_a_tuned_tower(tmp_path, records, clip_dir):
    with pytest.raises(ValueError, match="recon_weight needs a tuned vision tower"):
        train_captioner(records, str(tmp_path / "x"),
                        CaptionerTrainConfig(stage="alt", steps=1, batch_size=8, recon_weight=1.0),
                        clip=clip_dir, model_cfg=ClipPrefixConfig(**{**TINY_PREFIX, "finetune_vision": False}))


def test_tokenizer_texts_shorten_later_captions_and_train_nothing_else(tmp_path, records, clip_dir, alt_dir):
    from transformers import AutoTokenizer

    from recaption.captioners.train_prefix import finetune_texts

    extra = finetune_texts(records, ("short", "descriptive"), "0.25", seed=0)
    assert extra == (select_examples(records, "short", "0.25", 0)[1]
                     + select_examples(records, "descriptive", "0.25", 0)[1])  # what those stages will read
    m = train_captioner(
        records, str(tmp_path / "alt"), CaptionerTrainConfig(stage="alt", steps=2, batch_size=8, warmup=1),
        clip=clip_dir, model_cfg=ClipPrefixConfig(**TINY_PREFIX), tokenizer_texts=extra)
    assert m["examples"] == len(records)  # the LM still trains on the alt-text alone
    plain = AutoTokenizer.from_pretrained(os.path.join(alt_dir, "tokenizer"))
    wider = AutoTokenizer.from_pretrained(str(tmp_path / "alt" / "tokenizer"))
    later = select_examples(records, "descriptive", "0.25", 0)[1]
    n = [sum(len(ids) for ids in t(later, add_special_tokens=False)["input_ids"]) for t in (plain, wider)]
    assert n[1] < 0.9 * n[0], n
    with pytest.raises(ValueError, match="tokenizer_texts"):
        train_captioner(records, str(tmp_path / "s"), CaptionerTrainConfig(stage="short", steps=1), init=alt_dir,
                        tokenizer_texts=extra)
    with pytest.raises(ValueError, match="short"):
        finetune_texts(records, ("alt",))


def test_bow_head_targets_skip_template_words_and_reward_a_prefix_near_the_words():
    from recaption.captioners.train_prefix import BowHead

    ids = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 5, 8, 2, 0, 0], [1, 5, 9, 9, 2, 0]])  # BOS 1, EOS 2, pad 0
    lengths = torch.tensor([5, 4, 5])
    head = BowHead(ids, lengths, vocab=12, specials=(1, 2, 0), max_df=0.5)
    hot = head.multi_hot(ids, lengths)
    assert hot[1].nonzero().flatten().tolist() == [1, 2, 5, 8]  # the padding past the length is not a word
    assert head.skip[5] and head.skip[1] and head.skip[2] and not head.skip[6]  # 5 is in every caption: a template
    emb = torch.eye(12, 16)  # word w's embedding: the unit vector e_w
    near = torch.stack([emb[[6, 7]], emb[[8, 8]], emb[[9, 9]]])  # (B, P=2, D): each caption's words in its prefix
    far = torch.stack([emb[[10, 11]], emb[[10, 11]], emb[[10, 11]]])
    with torch.no_grad():
        assert float(head.loss(near, emb, ids, lengths)) < float(head.loss(far, emb, ids, lengths)) - 1.0
        only_templates = head.loss(near[:1], emb, torch.tensor([[1, 5, 2]]), torch.tensor([3]))
    assert float(only_templates) == 0.0  # no target words: nothing to learn, no NaN


def test_bow_loss_trains_records_its_head_and_resumes_exactly(tmp_path, records, clip_dir, monkeypatch):
    from safetensors.torch import load_file

    m = _alt(tmp_path / "bow", records, clip_dir, steps=4, bow_weight=1.0)
    assert m["final_bow_loss"] > 0
    state = torch.load(tmp_path / "bow" / "train_state.pt", weights_only=False)
    assert set(state["bow_head"]) == {"bias", "log_scale"}  # training state, not part of the saved captioner
    _alt(tmp_path / "straight", records, clip_dir, steps=6, save_every=3, bow_weight=1.0)
    killed_at_step_5(monkeypatch, lambda: _alt(tmp_path / "resumed", records, clip_dir, steps=6, save_every=3,
                                               bow_weight=1.0))
    assert _alt(tmp_path / "resumed", records, clip_dir, steps=6, save_every=3, bow_weight=1.0)["resumed_from"] == 3
    x, y = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("straight", "resumed"))
    assert all(torch.allclose(x[k], y[k], atol=1e-6) for k in x)
    _alt(tmp_path / "no_bow", records, clip_dir, steps=6, save_every=3)
    z = load_file(str(tmp_path / "no_bow" / "model.safetensors"))
    assert x.keys() == z.keys()  # the head is not saved with the captioner
    assert any(not torch.allclose(x[k], z[k], atol=1e-6) for k in x)  # the loss changed the training


def test_prefix_grid_pools_the_token_map_to_a_fixed_grid(clip_dir, records):
    from recaption.captioners.clip_prefix import n_image_tokens, vision_tokens
    from recaption.clip import load_clip
    from recaption.clip.data import load_pixels

    enc = load_clip(clip_dir)
    px = load_pixels(records[:3], 64)
    full = vision_tokens(enc, px, ClipPrefixConfig(**TINY_PREFIX))  # class/mean token + the s x s map
    s = int(round((full.shape[1] - 1) ** 0.5))
    for g in (1, 3, s):
        cfg = ClipPrefixConfig(**{**TINY_PREFIX, "prefix_grid": g})
        h = vision_tokens(enc, px, cfg)
        assert h.shape[1] == 1 + g * g == n_image_tokens(cfg, enc)
        fmap = full[:, 1:].transpose(1, 2).reshape(3, -1, s, s)
        want = torch.nn.functional.adaptive_avg_pool2d(fmap, g).flatten(2).transpose(1, 2)
        torch.testing.assert_close(h[:, 1:], want)  # region means of the same map, in row-major order
        torch.testing.assert_close(h[:, :1], full[:, :1])
    # the grid of 1 is the mean of the map
    one = vision_tokens(enc, px, ClipPrefixConfig(**{**TINY_PREFIX, "prefix_grid": 1}))
    torch.testing.assert_close(one[:, 1], full[:, 1:].mean(1))
    with pytest.raises(ValueError, match="finer than"):
        vision_tokens(enc, px, ClipPrefixConfig(**{**TINY_PREFIX, "prefix_grid": s + 1}))
    with pytest.raises(ValueError, match="not both"):
        ClipPrefixConfig(prefix_grid=3, prefix_pool=2)
    with pytest.raises(ValueError, match="prefix_grid must be"):
        ClipPrefixConfig(prefix_grid=-1)


def test_prefix_grid_captioner_trains_and_reloads(tmp_path, records, clip_dir):
    cfg = ClipPrefixConfig(**{**TINY_PREFIX, "prefix_grid": 3, "prefix_len": 0})  # every grid token is a prefix
    train_captioner(records, str(tmp_path), CaptionerTrainConfig(stage="alt", steps=2, batch_size=8, warmup=1),
                    clip=clip_dir, model_cfg=cfg)
    cap = load_clip_prefix(str(tmp_path))
    assert cap.cfg.prefix_grid == 3 and cap.model.pos.shape[1] == 10  # mean token + 3 x 3
    assert len(cap.caption([r.pil() for r in records[:2]], "short")) == 2


def test_mirror_caption_swaps_direction_words_and_skips_quoted_text():
    from recaption.captioners.train_prefix import mirror_caption, swap_pairs

    p = swap_pairs("left:right")
    assert mirror_caption("At the upper left a dot; Right of it, LEFT. The leftmost is bright.", p) == \
        "At the upper right a dot; Left of it, RIGHT. The leftmost is bright."
    assert mirror_caption('A sign that says "LEFT" on the left.', p) is None  # written text: never mirrored
    assert mirror_caption("left", swap_pairs("")) == "left"
    assert swap_pairs(" left:right , east:West ") == [("left", "right"), ("east", "west")]
    for bad in ("left", "left:left", "left:ri ght", "a:b:c"):
        with pytest.raises(ValueError, match="hflip_swap"):
            swap_pairs(bad)
    with pytest.raises(ValueError, match="hflip"):
        CaptionerTrainConfig(hflip=1.5)
    with pytest.raises(ValueError, match="hflip_swap"):
        CaptionerTrainConfig(hflip_swap="left")


def test_hflip_mirrors_image_and_caption_together_and_resumes_exactly(tmp_path, records, alt_dir, monkeypatch):
    import recaption.captioners.clip_prefix as cp
    from recaption.captioners.train_prefix import mirror_caption, swap_pairs, tokenize_captions
    from recaption.clip.data import load_pixels

    seen = []
    real_tokens, real_loss = cp.vision_tokens, cp.ClipPrefixModel.loss

    def tokens(enc, px, cfg, with_grid=False):
        seen.append([px.clone()])
        return real_tokens(enc, px, cfg, with_grid)

    def loss(self, x, ids, lengths, return_prefix=False):
        if self.training:
            seen[-1] += [ids.clone(), lengths.clone()]
        return real_loss(self, x, ids, lengths, return_prefix)

    monkeypatch.setattr(cp, "vision_tokens", tokens)
    monkeypatch.setattr(cp.ClipPrefixModel, "loss", loss)

    def run(out, steps=6, **kw):
        return train_captioner(records, str(out), CaptionerTrainConfig(
            stage="descriptive", steps=steps, batch_size=8, warmup=1, finetune_size="10", save_every=3, hflip=0.5,
            **kw), init=alt_dir)

    run(tmp_path / "flip")
    monkeypatch.setattr(cp, "vision_tokens", real_tokens)
    monkeypatch.setattr(cp.ClipPrefixModel, "loss", real_loss)
    chosen, texts = select_examples(records, "descriptive", "10")
    assert [r.key for r in chosen] == json.load(open(tmp_path / "flip" / "finetune_keys.json"))
    tok = load_clip_prefix(alt_dir).tokenizer
    px = load_pixels(chosen, 64)
    mirrored = [mirror_caption(t, swap_pairs("left:right")) for t in texts]
    plain_ids, plain_len = tokenize_captions(tok, texts, 160)
    m_ids, m_len = tokenize_captions(tok, [m or t for m, t in zip(mirrored, texts, strict=True)], 160)
    flips = plain = changed = 0
    for batch_px, ids, lengths in (s for s in seen if len(s) == 3):
        for p, row, n in zip(batch_px, ids, lengths, strict=True):
            j = next(i for i in range(len(chosen)) if torch.equal(p, px[i]) or torch.equal(p, px[i].flip(-1)))
            if torch.equal(p, px[j]) and not torch.equal(p, px[j].flip(-1)):
                assert n == plain_len[j] and torch.equal(row[:n], plain_ids[j, :n])
                plain += 1
            elif not torch.equal(p, px[j]):  # the mirrored image comes with the mirrored caption
                assert mirrored[j] is not None
                assert n == m_len[j] and torch.equal(row[:n], m_ids[j, :n])
                flips += 1
                changed += mirrored[j] != texts[j]
    assert flips > 5 and plain > 5 and changed > 0, (flips, plain, changed)
    # drawn from the run's generator: a killed and resumed run mirrors the same examples
    killed_at_step_5(monkeypatch, lambda: run(tmp_path / "resumed"))
    assert run(tmp_path / "resumed")["resumed_from"] == 3
    a, b = (load_clip_prefix(str(tmp_path / d)).model.state_dict() for d in ("flip", "resumed"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_shift_images_moves_by_whole_pixels_and_repeats_the_edges():
    from recaption.captioners.train_prefix import shift_images

    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.uint8).view(2, 3, 5, 6)
    y = shift_images(x, torch.tensor([[2, 0], [-1, 3]]))
    assert y.dtype == torch.uint8 and y.shape == x.shape
    assert torch.equal(y[0, :, :, 2:], x[0, :, :, :4])  # 2 px to the right
    assert torch.equal(y[0, :, :, 0], x[0, :, :, 0]) and torch.equal(y[0, :, :, 1], x[0, :, :, 0])  # edge repeated
    assert torch.equal(y[1, :, 3:, :5], x[1, :, :2, 1:])  # 1 px left, 3 px down
    assert torch.equal(y[1, :, 0, :5], x[1, :, 0, 1:]) and torch.equal(y[1, :, :, 5], y[1, :, :, 4])
    assert torch.equal(shift_images(x, torch.zeros(2, 2, dtype=torch.long)), x)
    with pytest.raises(ValueError, match="offsets"):
        shift_images(x, torch.zeros(3, 2, dtype=torch.long))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="shift must be"):
            CaptionerTrainConfig(shift=bad)


def test_shift_moves_what_the_tuned_tower_sees_and_resumes_exactly(tmp_path, records, alt_dir, monkeypatch):
    import itertools

    import recaption.captioners.clip_prefix as cp
    from recaption.captioners.train_prefix import shift_images
    from recaption.clip.data import load_pixels

    seen = []
    real_tokens = cp.vision_tokens

    def tokens(enc, px, cfg, with_grid=False):
        if enc.model.training:  # the training steps, not the captioning a checkpoint may do
            seen.append(px.clone())
        return real_tokens(enc, px, cfg, with_grid)

    def run(out, steps=6, **kw):
        return train_captioner(records, str(out), CaptionerTrainConfig(
            stage="descriptive", steps=steps, batch_size=8, warmup=1, finetune_size="10", save_every=3, shift=2,
            **kw), init=alt_dir)

    monkeypatch.setattr(cp, "vision_tokens", tokens)
    run(tmp_path / "shift")
    monkeypatch.setattr(cp, "vision_tokens", real_tokens)
    chosen, _ = select_examples(records, "descriptive", "10")
    px = load_pixels(chosen, 64)
    offsets = list(itertools.product(range(-2, 3), repeat=2))
    moved = {}  # each image the tower saw is one of the chosen images moved by at most 2 px each way
    for p in torch.cat(seen):
        hits = [(j, o) for j in range(len(chosen)) for o in offsets
                if torch.equal(p, shift_images(px[j:j + 1], torch.tensor([o]))[0])]
        assert hits, "an image the tower saw is not a chosen image moved by <= 2 px"
        moved[hits[0][1]] = moved.get(hits[0][1], 0) + 1
    assert len(seen) == 6 and len(moved) > 5 and sum(n for o, n in moved.items() if o != (0, 0)) > 24, moved
    # drawn from the run's generator: a killed and resumed run moves the same examples the same way
    killed_at_step_5(monkeypatch, lambda: run(tmp_path / "resumed"))
    assert run(tmp_path / "resumed")["resumed_from"] == 3
    a, b = (load_clip_prefix(str(tmp_path / d)).model.state_dict() for d in ("shift", "resumed"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(ValueError, match="tuned vision tower"):
        run(tmp_path / "frozen", freeze_vision=True)


def test_ema_checkpoint_holds_the_average_and_training_goes_on_exactly(tmp_path, records, alt_dir, monkeypatch):
    from safetensors.torch import load_file

    def run(out, steps=6, **kw):
        return train_captioner(records, str(out), CaptionerTrainConfig(
            stage="descriptive", steps=steps, batch_size=8, warmup=1, finetune_size="10", save_every=3, **kw),
            init=alt_dir)

    def weights(out):
        return load_clip_prefix(str(tmp_path / out)).model.state_dict()

    # one step: the average is d * init + (1 - d) * the step's weights, d = min(ema, 2 / 11)
    run(tmp_path / "plain1", steps=1)
    run(tmp_path / "ema1", steps=1, ema=0.9)
    w0, w1, avg = weights(alt_dir), weights("plain1"), weights("ema1")
    state = torch.load(str(tmp_path / "ema1" / "train_state.pt"), weights_only=False)
    d = 2 / 11
    names = [n for n, _ in load_clip_prefix(str(tmp_path / "ema1")).model.named_parameters()]
    moved = 0
    for k in names:
        torch.testing.assert_close(avg[k], d * w0[k] + (1 - d) * w1[k], rtol=0, atol=1e-6)
        moved += not torch.equal(w0[k], w1[k])
    assert moved > len(names) // 2
    # the state keeps the training weights, the plain run's (the model's first, then the tuned tower's)
    assert len(state["training_weights"]) > len(names)
    assert all(torch.equal(t, w1[k]) for t, k in zip(state["training_weights"][:len(names)], names, strict=True))
    # averaging does not change training: six steps' training weights equal the plain run's; the files differ
    run(tmp_path / "plain", steps=6)
    run(tmp_path / "ema", steps=6, ema=0.9)
    tw = torch.load(str(tmp_path / "ema" / "train_state.pt"), weights_only=False)["training_weights"]
    plain, ema = weights("plain"), weights("ema")
    assert all(torch.allclose(t, plain[k], atol=1e-6) for t, k in zip(tw[:len(names)], names, strict=True))
    assert sum(not torch.allclose(plain[k], ema[k], atol=1e-4) for k in names) > len(names) // 2
    # killed after step 3 and resumed: the same average and the same tuned tower as six steps straight
    killed_at_step_5(monkeypatch, lambda: run(tmp_path / "resumed", ema=0.9))
    assert run(tmp_path / "resumed", ema=0.9)["resumed_from"] == 3
    for part in ("model.safetensors", "clip/model.safetensors"):
        x, y = load_file(str(tmp_path / "ema" / part)), load_file(str(tmp_path / "resumed" / part))
        assert x.keys() == y.keys() and all(torch.allclose(x[k], y[k], atol=1e-6) for k in x), part
    with pytest.raises(ValueError, match="ema must be a decay"):
        CaptionerTrainConfig(ema=1.0)
