"""The world CLIP with a ResNet image tower: trains, saves in its libraries' layouts, loads, and feeds a captioner."""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")

from recaption.captioners.testing import TINY_CLIP, TINY_PREFIX, world_records  # noqa: E402
from recaption.clip import load_clip  # noqa: E402
from recaption.clip.data import load_pixels, normalize  # noqa: E402
from recaption.clip.train import ClipTrainConfig, train_clip  # noqa: E402

TINY_RESNET = {**TINY_CLIP, "vision_arch": "resnet", "resnet_stem": 8, "resnet_widths": (8, 16),
               "resnet_depths": (1, 1)}


@pytest.fixture(scope="module")
def records():
    return world_records(40, seed=3)


@pytest.fixture(scope="module")
def conv_dir(tmp_path_factory, records):
    from test_captioner_prefix import trapped

    out = str(tmp_path_factory.mktemp("convclip"))
    train_clip(trapped(records), out, ClipTrainConfig(**TINY_RESNET))  # alt-text only, as the ViT CLIP
    return out


def test_resnet_clip_saves_each_part_in_its_library_layout_and_reloads_exactly(conv_dir, records):
    from transformers import CLIPTextModel, ResNetModel

    from recaption.clip.conv import ConvClipModel

    enc = load_clip(conv_dir)
    assert isinstance(enc.model, ConvClipModel)
    assert ResNetModel.from_pretrained(os.path.join(conv_dir, "vision")).config.hidden_sizes == [8, 16]
    assert CLIPTextModel.from_pretrained(os.path.join(conv_dir, "text")).config.hidden_size == TINY_CLIP["text_width"]
    f = enc.encode_images([r.pil() for r in records[:4]])
    assert f.shape == (4, TINY_CLIP["projection_dim"]) and torch.allclose(f.norm(dim=-1), torch.ones(4), atol=1e-5)
    g = enc.model.get_image_features(pixel_values=normalize(load_pixels(records[:4], 64)))
    assert torch.allclose(f, torch.nn.functional.normalize(g, dim=-1), atol=1e-5)  # processor == training path
    again = load_clip(conv_dir)
    for (k, v), (k2, v2) in zip(enc.model.state_dict().items(), again.model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    t = enc.encode_texts([r.captions["alt"] for r in records[:3]] + ["word " * 100])
    assert t.features.shape == (4, TINY_CLIP["projection_dim"]) and t.truncated == [False] * 3 + [True]
    info = json.load(open(os.path.join(conv_dir, "clip_train.json")))
    assert info["config"]["vision_arch"] == "resnet" and 0.0 <= info["metrics"]["i2t_top1"] <= 1.0


def test_resnet_clip_loss_is_clips_symmetric_infonce_and_it_learns():
    """forward(return_loss=True) matches CLIP's loss computed by hand; a few steps on one batch lower it."""
    from transformers import CLIPTextConfig, ResNetConfig

    from recaption.clip.conv import ConvClipModel

    torch.manual_seed(0)
    m = ConvClipModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
                      CLIPTextConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, max_position_embeddings=12, eos_token_id=2),
                      projection_dim=8)
    px, ids = torch.randn(6, 3, 64, 64), torch.randint(3, 50, (6, 10))
    ids[:, -1] = 2
    out = m(input_ids=ids, pixel_values=px, return_loss=True)
    img = torch.nn.functional.normalize(m.get_image_features(px), dim=-1)
    txt = torch.nn.functional.normalize(m.get_text_features(ids), dim=-1)
    logits = m.logit_scale.exp() * img @ txt.T
    want = (torch.nn.functional.cross_entropy(logits, torch.arange(6))
            + torch.nn.functional.cross_entropy(logits.T, torch.arange(6))) / 2
    assert torch.allclose(out.loss, want, atol=1e-5) and out.logits_per_image.shape == (6, 6)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = out.loss.item()
    for _ in range(20):
        loss = m(input_ids=ids, pixel_values=px, return_loss=True).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_resnet_tower_tokens_read_like_a_vits():
    """hidden states become (B, 1 + H*W, C): the spatial mean, then the map in raster order."""
    from recaption.clip.conv import ConvTower

    fmap = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    tok = ConvTower.tokens(fmap)
    assert tok.shape == (2, 5, 3)
    assert torch.equal(tok[:, 1:], fmap.flatten(2).transpose(1, 2))
    assert torch.allclose(tok[:, 0], fmap.mean((2, 3)))
    assert torch.equal(tok[0, 2], fmap[0, :, 0, 1])  # row 0, column 1


def test_captioner_on_a_resnet_clip_trains_tunes_the_tower_and_reloads(tmp_path, conv_dir, records):
    from recaption.captioners.clip_prefix import (
        ClipPrefixConfig,
        feature_layer,
        load_clip_prefix,
        n_image_tokens,
    )
    from recaption.captioners.train_prefix import CaptionerTrainConfig, train_captioner

    enc = load_clip(conv_dir)
    cfg = ClipPrefixConfig(**{**TINY_PREFIX, "prefix_len": 0})
    assert feature_layer(cfg, enc) == -1 and n_image_tokens(cfg, enc) == 1 + 8 * 8  # 64 px / 8 -> 8x8 positions
    assert n_image_tokens(ClipPrefixConfig(**{**TINY_PREFIX, "prefix_len": 0, "clip_layer": 0}), enc) == 1 + 16 * 16
    before = {k: v.clone() for k, v in enc.model.vision_model.state_dict().items()}
    out = str(tmp_path / "cap")
    train_captioner(records, out, CaptionerTrainConfig(stage="alt", steps=3, batch_size=8, warmup=1),
                    clip=conv_dir, model_cfg=cfg)
    cap = load_clip_prefix(out)
    tuned = cap.clip.model.vision_model.state_dict()
    assert not all(torch.equal(tuned[k], before[k]) for k in before)  # finetune_vision moved the ResNet
    texts = cap.caption([r.pil() for r in records[:3]], "short")
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert cap.caption([r.pil() for r in records[:3]], "short") == texts  # reload + greedy: deterministic


def test_bad_vision_arch_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="vision_arch must be one of"):
        ClipTrainConfig(vision_arch="convnext")
    with pytest.raises(ValueError, match="one entry per stage"):
        ClipTrainConfig(vision_arch="resnet", resnet_widths=(8, 16), resnet_depths=(1,))
    from recaption.clip.conv import ConvClipModel

    with pytest.raises(FileNotFoundError, match="heads.safetensors is missing"):
        os.makedirs(tmp_path / "half")
        (tmp_path / "half" / "conv_clip.json").write_text("{}")
        ConvClipModel.from_pretrained(str(tmp_path / "half"))


def test_extra_layers_add_earlier_tower_stages_to_the_prefix_starting_from_zero(tmp_path, conv_dir, records):
    """A multi-level prefix: an earlier (16x16) ResNet stage pooled to the prefix's grid, added to an alt checkpoint
    through a zero-initialised projection (the loss is unchanged at the start), then trained, saved and reloaded."""
    from recaption.captioners.clip_prefix import (
        ClipPrefixConfig,
        load_clip_prefix,
        prefix_levels,
        vision_levels,
        vision_tokens,
    )
    from recaption.captioners.train_prefix import CaptionerTrainConfig, tokenize_captions, train_captioner

    enc = load_clip(conv_dir)
    px = load_pixels(records[:4], 64)
    cfg = ClipPrefixConfig(**{**TINY_PREFIX, "prefix_len": 0, "prefix_grid": 3, "extra_layers": [1]})
    assert cfg.extra_layers == (1,)  # a JSON list becomes a tuple
    main, extra = vision_levels(enc, px, cfg)
    hidden = enc.model.vision_model(pixel_values=normalize(px), output_hidden_states=True).hidden_states
    stage1 = hidden[1][:, 1:].transpose(1, 2).reshape(4, 8, 16, 16)  # 8 channels at 16x16
    torch.testing.assert_close(extra[:, 1:], torch.nn.functional.adaptive_avg_pool2d(stage1, 3).flatten(2).transpose(1, 2))
    torch.testing.assert_close(extra[:, :1], hidden[1][:, :1])  # its own mean token
    assert main.shape == (4, 10, 16) and extra.shape == (4, 10, 8)
    torch.testing.assert_close(vision_tokens(enc, px, cfg), torch.cat([main, extra], -1))
    assert prefix_levels(cfg, enc) == (10, [16, 8])
    with pytest.raises(ValueError, match="no layer 7"):
        vision_levels(enc, px, ClipPrefixConfig(**{**TINY_PREFIX, "prefix_len": 0, "extra_layers": [7]}))
    with pytest.raises(ValueError, match="needs prefix='patch'"):
        ClipPrefixConfig(prefix="pooled", extra_layers=(1,))
    for bad in ((-1,), (1, 1)):  # a negative index could name a level twice; so does a repeated one
        with pytest.raises(ValueError, match="distinct hidden-state index"):
            ClipPrefixConfig(**{**TINY_PREFIX, "prefix_len": 0, "extra_layers": bad})

    alt = str(tmp_path / "alt")
    train_captioner(records, alt, CaptionerTrainConfig(stage="alt", steps=2, batch_size=8, warmup=1), clip=conv_dir,
                    model_cfg=ClipPrefixConfig(**{**TINY_PREFIX, "prefix_len": 0, "prefix_grid": 3}))
    cap = load_clip_prefix(alt)
    cap.model.eval()
    ids, lengths = tokenize_captions(cap.tokenizer, [r.captions["alt"] for r in records[:4]], 160)
    with torch.no_grad():
        before = cap.model.loss(vision_tokens(cap.clip, px, cap.cfg), ids, lengths)
        cap.model.add_levels([8])
        after = cap.model.loss(vision_tokens(cap.clip, px, cfg), ids, lengths)
    torch.testing.assert_close(before, after)  # zero-initialised: the checkpoint continues exactly

    out = str(tmp_path / "short")
    train = CaptionerTrainConfig(stage="short", steps=3, batch_size=8, warmup=1, finetune_size="16", save_every=0)
    train_captioner(records, out, train, init=alt, add_layers=[1, 1])
    tuned = load_clip_prefix(out)
    assert tuned.cfg.extra_layers == (1,) and tuned.model.level_dims == [16, 8]
    w = tuned.model.levels[0][1].weight
    assert w.shape == (TINY_PREFIX["lm_width"], 8) and w.abs().sum() > 0  # trained away from zero
    texts = tuned.caption([r.pil() for r in records[:3]], "short")
    assert load_clip_prefix(out).caption([r.pil() for r in records[:3]], "short") == texts
    # resuming the finished run (same arguments) does not add the level twice
    train_captioner(records, out, train, init=alt, add_layers=[1])
    assert load_clip_prefix(out).model.level_dims == [16, 8]


def test_a_later_stage_can_freeze_the_tuned_tower_and_change_dropout(tmp_path, conv_dir, records):
    """``freeze_vision``: the stage trains mapper + LM on cached features and keeps the tower exactly as its init
    left it (saved beside the checkpoint); ``dropout``: every dropout of the model is set, and saved so."""
    from safetensors.torch import load_file

    from recaption.captioners.clip_prefix import ClipPrefixConfig, load_clip_prefix
    from recaption.captioners.train_prefix import CaptionerTrainConfig, train_captioner

    alt = str(tmp_path / "alt")
    train_captioner(records, alt, CaptionerTrainConfig(stage="alt", steps=2, batch_size=8, warmup=1, dropout=0.3),
                    clip=conv_dir, model_cfg=ClipPrefixConfig(**{**TINY_PREFIX, "prefix_len": 0, "prefix_grid": 3}))
    first = load_clip_prefix(alt)
    assert first.cfg.dropout == 0.3 and first.model.lm.config.attn_pdrop == 0.3
    assert {m.p for m in first.model.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}

    out = str(tmp_path / "short")
    train = CaptionerTrainConfig(stage="short", steps=3, batch_size=8, warmup=1, finetune_size="16", save_every=0,
                                 freeze_vision=True, dropout=0.0)
    train_captioner(records, out, train, init=alt)
    cap = load_clip_prefix(out)
    assert not cap.cfg.finetune_vision and cap.cfg.clip == "clip" and cap.cfg.dropout == 0.0
    tower = "vision/model.safetensors"
    a, b = load_file(os.path.join(alt, "clip", tower)), load_file(os.path.join(out, "clip", tower))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the tower as alt left it
    wa, wb = load_file(os.path.join(alt, "model.safetensors")), load_file(os.path.join(out, "model.safetensors"))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)  # mapper + LM trained
    assert {m.p for m in cap.model.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
    assert cap.model.lm.config.resid_pdrop == 0.0
    feats = torch.randn(2, 10, sum(cap.model.level_dims))
    ids = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])
    cap.model.train()
    torch.testing.assert_close(cap.model.loss(feats, ids, torch.tensor([4, 3])),
                               cap.model.loss(feats, ids, torch.tensor([4, 3])))  # no dropout left in train mode
    with pytest.raises(ValueError, match="dropout must be in"):
        cap.model.set_dropout(1.0)
    with pytest.raises(ValueError, match="dropout must be in"):
        CaptionerTrainConfig(dropout=-0.1)  # refused before any data is read
