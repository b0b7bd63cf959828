"""Text-to-image: components, samplers, caches, training with exact resume, from_pretrained, generation.

Everything is tiny (VAE with 2 blocks, U-Net channels (8, 16), T5 d_model 16) on 16 px images.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from recaption.records import Record, encode_png
from recaption.t2i import data as t2i_data
from recaption.t2i.components import build_text_encoder, build_unet, build_vae, latent_geometry
from recaption.t2i.config import (
    DiffusionConfig,
    T2ITrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from recaption.t2i.diffusion import SAMPLERS, alphas_cumprod
from recaption.t2i.text import TextEncoder, span_corrupt

COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def make_records(n: int = 24, size: int = 16, missing_every: int = 7) -> list[Record]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        name = list(COLORS)[i % 3]
        a = np.full((size, size, 3), 240, np.uint8)
        x = int(rng.integers(0, size // 2))
        a[4:10, x:x + 6] = COLORS[name]
        caps = {"alt": f"photo {i % 5}", "descriptive": f"a {name} square, {'left' if x < 4 else 'right'}"}
        if missing_every and i % missing_every == 0:
            del caps["descriptive"]
        out.append(Record(key=f"k{i:03d}", image=encode_png(Image.fromarray(a)), captions=caps))
    return out


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """An untrained tiny VAE saved in diffusers layout (training it is tested separately)."""
    d = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    vae = build_vae("vae-tiny")
    vae.register_to_config(scaling_factor=0.5)
    vae.save_pretrained(d)
    return d


def tiny_cfg(tmp, vae_dir, **kw) -> T2ITrainConfig:
    base = dict(out=str(tmp / "run"), vae=str(vae_dir), text_encoder="t5-tiny", text_pretrain_steps=3,
                unet="unet-tiny", steps=4, batch_size=6, image_size=16, log_every=2, checkpoint_every=2,
                sample_every=0, warmup_steps=2, cache_dir=str(tmp / "cache"), lr=1e-3, ema_decay=0.9)
    base.update(kw)
    return T2ITrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, vae_dir):
    """One tiny training run shared by the loading and generation tests."""
    from recaption.t2i.train import train_t2i

    tmp = tmp_path_factory.mktemp("trained")
    cfg = tiny_cfg(tmp, vae_dir, steps=4, sample_every=4, sample_steps=3)
    train_t2i(cfg, records=make_records())
    return cfg


# -- components ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_components_build_and_run():
    vae = build_vae("vae-tiny")
    assert latent_geometry(vae, 16) == (4, 8)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = vae.encode(x).latent_dist.mean  # (2, 4, 8, 8)
    assert z.shape == (2, 4, 8, 8)
    assert vae.decode(z).sample.shape == x.shape
    text = build_text_encoder("t5-tiny", ["a red square on the left", "a blue circle"] * 5)
    emb, mask = text.encode(["a red square", "", "a blue circle on the left"])
    assert emb.shape[:2] == mask.shape and emb.shape[2] == 16 and emb.shape[0] == 3
    assert mask[1].sum() == 1  # the empty caption is just </s>
    unet = build_unet("unet-tiny", 4, 8, text.dim)
    out = unet(z, torch.tensor([10, 500]), encoder_hidden_states=emb[:2], encoder_attention_mask=mask[:2]).sample
    assert out.shape == z.shape


def test_config_json_round_trip(tmp_path):
    cfg = T2ITrainConfig(data="x", out="y", sample_prompts=("a", "b"),
                         diffusion=DiffusionConfig(prediction_type="epsilon"))
    assert config_from_dict(config_to_dict(cfg)) == cfg
    save_config(cfg, tmp_path / "c.json")
    assert load_config(tmp_path / "c.json") == cfg
    with pytest.raises(ValueError, match="unknown fields"):
        config_from_dict({**config_to_dict(cfg), "bogus": 1})


def test_span_corruption_hides_and_restores_the_sequence():
    rng = np.random.default_rng(0)
    sentinels = [1000 + i for i in range(10)]
    ids = list(range(10, 40))
    inp, tgt = span_corrupt(ids, rng, sentinels, eos=1)
    assert inp[-1] == 1 and tgt[-1] == 1
    spans, cur = {}, None
    for t in tgt[:-1]:
        if t in sentinels:
            cur = t
            spans[cur] = []
        else:
            spans[cur].append(t)
    rebuilt = [x for t in inp[:-1] for x in (spans[t] if t in sentinels else [t])]
    assert rebuilt == ids and 0 < sum(len(v) for v in spans.values()) < len(ids)


@pytest.mark.slow
def test_text_pretraining_lowers_the_loss():
    from recaption.t2i.text import pretrain_text_encoder

    caps = [f"a {c} {s} on the {p}" for c in COLORS for s in ("square", "circle") for p in ("left", "right")]
    text = build_text_encoder("t5-tiny", caps * 3)
    losses = pretrain_text_encoder(text, caps, steps=30, batch_size=16, lr=3e-3)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_samplers_recover_a_point_mass(sampler, prediction):
    """With the exact denoiser of data concentrated at c, every sampler must land on c."""
    diffusion = DiffusionConfig(prediction_type=prediction)
    acp = alphas_cumprod(diffusion)
    c = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)

    def denoiser(x, t):  # x is x_t in VP form (Euler's scale_model_input maps x_sigma back to it)
        a, s = acp[t.long()].sqrt().view(-1, 1, 1, 1), (1 - acp[t.long()]).sqrt().view(-1, 1, 1, 1)
        eps = (x - a * c) / s
        return eps if prediction == "epsilon" else a * eps - s * c

    g = torch.Generator().manual_seed(0)
    x0 = SAMPLERS[sampler](denoiser, (2, 1, 4, 4), diffusion=diffusion, steps=10, generator=g)
    assert torch.allclose(x0, c.expand(2, 1, 4, 4), atol=1e-3), (x0 - c).abs().max()


# -- data and caches ----------------------------------------------------------------------------------


def test_caption_table_and_truth_option():
    recs = make_records(6, missing_every=0)
    d = t2i_data.read_data(recs, ("descriptive", "alt", "alt"))
    assert d.table.texts[0] == "" and len(d) == 6
    assert [d.table.texts[i] for i in d.table.ids[:, 0]] == [r.captions["descriptive"] for r in recs]
    for i, r in enumerate(recs):  # world-style records: truth under meta, captions hold alt only
        r.meta["world"] = {"truth": {"descriptive": f"TRUE {i}", "short": "s"}}
        del r.captions["descriptive"]
    d = t2i_data.read_data(recs, ("descriptive", "alt", "alt"))
    assert (d.table.ids[:, 0] < 0).all()  # not read from truth unless asked
    d = t2i_data.read_data(recs, ("descriptive", "alt", "alt"), captions_from_truth=True)
    assert [d.table.texts[i] for i in d.table.ids[:, 0]] == [f"TRUE {i}" for i in range(6)]


@pytest.mark.slow
def test_caches_prevent_re_encoding(tmp_path, vae_dir, monkeypatch):
    """Each image meets the VAE once and each distinct caption the frozen text encoder once, across runs."""
    from diffusers import AutoencoderKL

    from recaption.t2i.train import train_t2i

    vae_images, text_inputs = [], []
    enc, fwd = AutoencoderKL.encode, TextEncoder.forward

    def count_vae(self, x, *a, **k):
        vae_images.append(x.shape[0])
        return enc(self, x, *a, **k)

    def count_text(self, ids, mask):
        text_inputs.extend(tuple(r[m.bool()].tolist()) for r, m in zip(ids, mask, strict=True))
        return fwd(self, ids, mask)

    monkeypatch.setattr(AutoencoderKL, "encode", count_vae)
    monkeypatch.setattr(TextEncoder, "forward", count_text)
    recs = make_records()
    cfg = tiny_cfg(tmp_path, vae_dir, steps=3, text_pretrain_steps=0)
    train_t2i(cfg, records=recs)
    n_texts = len(t2i_data.read_data(recs, ("descriptive", "alt", "alt")).table.texts)
    assert sum(vae_images) == len(recs)
    assert len(text_inputs) == n_texts == len(set(text_inputs))  # every distinct caption exactly once
    vae_images.clear()
    text_inputs.clear()
    train_t2i(dataclasses.replace(cfg, out=str(tmp_path / "run2"), steps=2), records=recs)
    assert vae_images == [] and text_inputs == []  # second run: all from the cache files


# -- training, resume, loading, generation ------------------------------------------------------------


def _state(out):
    from safetensors.torch import load_file

    ck = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    st = torch.load(ck / "state.pt", weights_only=False)
    return load_file(str(ck / "unet" / "diffusion_pytorch_model.safetensors")), st


@pytest.mark.slow
@pytest.mark.parametrize("text_mode", ["pretrain", "joint"])
def test_kill_and_resume_equals_uninterrupted(tmp_path, vae_dir, text_mode):
    from recaption.t2i.train import train_t2i

    recs = make_records()
    kw = dict(steps=4, checkpoint_every=2, text_mode=text_mode, grad_accum=2, batch_size=4)
    full = tiny_cfg(tmp_path, vae_dir, out=str(tmp_path / "full"), **kw)
    train_t2i(full, records=recs)

    class Killed(Exception):
        pass

    def kill_after_3(step):
        if step == 3:  # dies after the step-2 checkpoint, losing step 3
            raise Killed

    part = tiny_cfg(tmp_path, vae_dir, out=str(tmp_path / "part"), **kw)
    with pytest.raises(Killed):
        train_t2i(part, records=recs, on_step=kill_after_3)
    train_t2i(part, records=recs, resume=True)

    (wa, sa), (wb, sb) = _state(tmp_path / "full"), _state(tmp_path / "part")
    assert sa["step"] == sb["step"] == 4
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ea, eb = sa["ema"]["shadow_params"], sb["ema"]["shadow_params"]
    assert all(torch.equal(x, y) for x, y in zip(ea, eb, strict=True))
    assert sa["blend"] == sb["blend"]
    if text_mode == "joint":
        from transformers import T5EncoderModel

        ta = T5EncoderModel.from_pretrained(tmp_path / "full" / "text_encoder").state_dict()
        tb = T5EncoderModel.from_pretrained(tmp_path / "part" / "text_encoder").state_dict()
        assert all(torch.equal(ta[k], tb[k]) for k in ta)
    rows = (tmp_path / "part" / "logs" / "train.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4"]


def test_time_box_stops_saves_and_exports(tmp_path, vae_dir):
    from recaption.t2i.train import train_t2i

    cfg = tiny_cfg(tmp_path, vae_dir, steps=50, log_every=1, text_pretrain_steps=0, max_minutes=1e-9)
    train_t2i(cfg, records=make_records(12))
    out = tmp_path / "run"
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-0000001"
    assert (out / "unet" / "config.json").exists()


def test_resume_refuses_changed_settings(tmp_path, vae_dir):
    from recaption.t2i.train import train_t2i

    cfg = tiny_cfg(tmp_path, vae_dir, steps=2, text_pretrain_steps=0)
    train_t2i(cfg, records=make_records(12))
    with pytest.raises(ValueError, match="lr"):
        train_t2i(dataclasses.replace(cfg, steps=4, lr=0.5), records=make_records(12), resume=True)


def test_outputs_load_with_each_library_from_pretrained(trained):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, T5EncoderModel

    from recaption.t2i.config import T2ITrainConfig as C

    out = __import__("pathlib").Path(trained.out)
    unet = UNet2DConditionModel.from_pretrained(out / "unet")
    vae = AutoencoderKL.from_pretrained(out / "vae")
    t5 = T5EncoderModel.from_pretrained(out / "text_encoder")
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    DDIMScheduler.from_pretrained(out / "scheduler")
    assert unet.config.cross_attention_dim == t5.config.d_model == 16
    assert vae.config.latent_channels == unet.config.in_channels == 4
    ids = tok(["a red square, left"], return_tensors="pt")
    assert t5(**ids).last_hidden_state.shape[-1] == 16
    assert config_from_dict(json.loads((out / "run_config.json").read_text()), C) == trained
    assert (out / "samples" / "step-0000004.png").exists()
    info = json.loads((out / "run_info.json").read_text())
    assert info["blend_counts"]["total"] == trained.steps * trained.batch_size
    csv = (out / "logs" / "train.csv").read_text().splitlines()
    assert csv[0].startswith("step,loss,lr,blend/")
    assert list((out / "logs" / "tb").glob("events.*"))
    # the exported U-Net carries the EMA weights, not the raw ones
    raw, st = _state(out)
    ema = dict(zip([k for k, _ in unet.named_parameters()], st["ema"]["shadow_params"], strict=True))
    assert all(torch.equal(p, ema[k]) for k, p in unet.named_parameters())
    assert not all(torch.equal(raw[k], ema[k]) for k in ema)


@pytest.mark.slow
def test_generate_is_deterministic_and_batch_invariant(trained):
    from recaption.t2i.generate import T2IPipeline, generate

    pipe = T2IPipeline.from_pretrained(trained.out, device="cpu")
    prompts = ["a red square, left", "a blue square, right", "a green square, left"]
    a = generate(pipe, prompts, seed=3, steps=4, guidance=2.0, sampler="dpm")
    b = generate(pipe, prompts, seed=3, steps=4, guidance=2.0, sampler="dpm", batch_size=2)
    c = generate(trained.out, prompts[:1], seed=4, steps=4, guidance=2.0, sampler="dpm")
    assert [im.size for im in a] == [(16, 16)] * 3
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    with pytest.raises(ValueError, match="unknown sampler"):
        generate(pipe, prompts, sampler="nope")


def test_cli_generate_writes_png_and_json(trained, tmp_path):
    (tmp_path / "p.txt").write_text("a red square, left\na blue square, right\n")
    out = tmp_path / "gen"
    from typer.testing import CliRunner

    from recaption.cli import app

    res = CliRunner().invoke(app, ["generate", "--model", trained.out, "--prompts", str(tmp_path / "p.txt"),
                                   "--prompt", "a green square", "--out", str(out), "--seed", "5",
                                   "--steps", "3"])
    assert res.exit_code == 0, res.output
    metas = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert [m["prompt"] for m in metas] == ["a green square", "a red square, left", "a blue square, right"]
    assert metas[1] | {"prompt": 0} == {"prompt": 0, "seed": 5, "image_seed": 6, "index": 1, "steps": 3,
                                        "guidance": 2.0, "sampler": "ddim", "model": trained.out}
    assert len(list(out.glob("*.png"))) == 3


def test_generate_with_upsampling_records_both_prompts(trained, tmp_path):
    pytest.importorskip("recaption.upsample")
    from recaption.t2i.generate import generate_to_dir

    paths = generate_to_dir(trained.out, ["a red square"], tmp_path / "up", seed=0, steps=2, upsample="template")
    meta = json.loads(paths[0].with_suffix(".json").read_text())
    assert meta["prompt"] == "a red square" and meta["upsample"] == "template"
    assert meta["upsampled_prompt"].startswith("a red square") and len(meta["upsampled_prompt"]) > 20


def test_cli_bad_blend_is_a_one_line_error(tmp_path, vae_dir, capsys):
    from recaption.cli import main

    with pytest.raises(SystemExit) as e:
        main(["t2i", "train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--vae", str(vae_dir),
              "--blend", "descriptive=0.9,alt=0.2", "--steps", "1"])
    assert e.value.code == 2
    assert "sum to 1" in capsys.readouterr().err


@pytest.mark.slow
def test_vae_train_and_cli_round_trip(tmp_path):
    """`recaption vae train` then `recaption t2i train` on a folder dataset, through the real CLI."""
    from diffusers import AutoencoderKL
    from typer.testing import CliRunner

    from recaption.cli import app
    from recaption.io import open_writer

    def main(args):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, (res.output, res.exception)

    data = tmp_path / "data"
    with open_writer(str(data), "folder") as w:
        for r in make_records(12):
            w.write(r)
    main(["vae", "train", "--data", str(data), "--out", str(tmp_path / "vae"), "--steps", "3", "--size", "vae-tiny",
          "--image-size", "16", "--batch-size", "4"])
    vae = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert vae.config.scaling_factor != 1.0  # set from the latents' std
    main(["t2i", "train", "--data", str(data), "--out", str(tmp_path / "run"), "--vae", str(tmp_path / "vae"),
          "--text-encoder", "t5-tiny", "--text-pretrain-steps", "2", "--unet", "unet-tiny", "--steps", "2",
          "--batch-size", "4", "--image-size", "16", "--sample-every", "0", "--cache-dir", str(tmp_path / "c"),
          "--seed", "1"])
    assert (tmp_path / "run" / "unet" / "config.json").exists()
    # continuing the VAE starts from its weights (not a fresh init) and keeps its geometry
    main(["vae", "train", "--data", str(data), "--out", str(tmp_path / "vae2"), "--steps", "1", "--lr", "1e-12",
          "--init", str(tmp_path / "vae"), "--image-size", "16", "--batch-size", "4"])
    vae2 = AutoencoderKL.from_pretrained(tmp_path / "vae2")
    assert vae2.config.block_out_channels == vae.config.block_out_channels
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(vae.parameters(), vae2.parameters(), strict=True))
    res = CliRunner().invoke(app, ["vae", "train", "--data", str(data), "--out", str(tmp_path / "v3"),
                                   "--init", str(tmp_path / "nope")])
    assert res.exit_code != 0 and "not a saved VAE (no config.json inside)" in str(res.exception)


def test_vae_time_box_stops_at_the_first_step_past_it(tmp_path):
    """The VAE's time box is checked every step (a slow step must not run on to the next log step)."""
    import csv

    from diffusers import AutoencoderKL

    from recaption.t2i.config import VAE_SIZES, VAETrainConfig
    from recaption.t2i.vae import train_vae

    data = tmp_path / "data"
    from recaption.io import open_writer

    with open_writer(str(data), "folder") as w:
        for r in make_records(8):
            w.write(r)
    cfg = VAETrainConfig(data=str(data), out=str(tmp_path / "vae"), vae=VAE_SIZES["vae-tiny"], steps=50,
                         batch_size=4, image_size=16, log_every=20, max_minutes=1e-9)
    train_vae(cfg)
    with (tmp_path / "vae" / "logs" / "train.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(float(r["step"])) for r in rows] == [1]  # stopped after one step, and that step is logged
    assert AutoencoderKL.from_pretrained(tmp_path / "vae").config.scaling_factor != 1.0


def test_vae_decoder_only_keeps_the_encoder_latents_and_scaling_factor(tmp_path):
    """A decoder-only fine-tune changes the decoder and nothing a U-Net depends on (encoder, scaling factor)."""
    from diffusers import AutoencoderKL
    from typer.testing import CliRunner

    from recaption.cli import app
    from recaption.io import open_writer
    from recaption.t2i.config import VAE_SIZES, VAETrainConfig
    from recaption.t2i.vae import train_vae

    data = tmp_path / "data"
    with open_writer(str(data), "folder") as w:
        for r in make_records(8):
            w.write(r)
    base = dict(data=str(data), vae=VAE_SIZES["vae-tiny"], batch_size=4, image_size=16, log_every=1)
    train_vae(VAETrainConfig(out=str(tmp_path / "vae"), steps=2, **base), device="cpu")
    res = CliRunner().invoke(app, ["vae", "train", "--data", str(data), "--out", str(tmp_path / "dec"), "--steps",
                                   "3", "--lr", "1e-2", "--init", str(tmp_path / "vae"), "--image-size", "16",
                                   "--batch-size", "4", "--decoder-only"])
    assert res.exit_code == 0, (res.output, res.exception)
    a, b = AutoencoderKL.from_pretrained(tmp_path / "vae"), AutoencoderKL.from_pretrained(tmp_path / "dec")
    assert b.config.scaling_factor == a.config.scaling_factor
    sa, sb = a.state_dict(), b.state_dict()
    enc = [k for k in sa if k.startswith(("encoder.", "quant_conv."))]
    dec = [k for k in sa if k.startswith(("decoder.", "post_quant_conv."))]
    assert enc and dec and len(enc) + len(dec) == len(sa)
    assert all(torch.equal(sa[k], sb[k]) for k in enc)
    assert sum(not torch.equal(sa[k], sb[k]) for k in dec) > len(dec) // 2
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(a.encode(x).latent_dist.mean, b.encode(x).latent_dist.mean)
    with pytest.raises(ValueError, match="decoder_only fine-tunes a saved VAE's decoder: give init"):
        train_vae(VAETrainConfig(out=str(tmp_path / "x"), steps=1, decoder_only=True, **base), device="cpu")


@pytest.mark.slow
def test_checkpoints_hold_ema_unets_one_can_sample_from(trained):
    from diffusers import UNet2DConditionModel

    from recaption.t2i.generate import T2IPipeline, checkpoint_steps

    out = __import__("pathlib").Path(trained.out)
    assert checkpoint_steps(out) == [2, 4]  # checkpoint_every 2, keep 2
    final = UNet2DConditionModel.from_pretrained(out / "unet")
    last = UNet2DConditionModel.from_pretrained(out / "checkpoints" / "step-0000004" / "unet_ema")
    assert all(torch.equal(a, b) for a, b in zip(final.parameters(), last.parameters(), strict=True))
    raw, _ = _state(out)  # the training weights saved beside them are not the EMA ones
    assert not all(torch.equal(raw[k], p) for k, p in last.named_parameters())
    p2 = T2IPipeline.from_pretrained(out, device="cpu", checkpoint=2)
    p4 = T2IPipeline.from_pretrained(out, device="cpu", checkpoint=4)
    a, b = p2(["a red square, left"], seed=1, steps=3), p4(["a red square, left"], seed=1, steps=3)
    assert not np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    swap = T2IPipeline.from_pretrained(out, device="cpu")  # one load, then swap checkpoints in place
    for step, want in ((2, a), (4, b)):
        swap.use_checkpoint(out, step)
        got = swap(["a red square, left"], seed=1, steps=3)
        assert np.array_equal(np.asarray(got[0]), np.asarray(want[0])) and swap.name.endswith(f"@{step}")
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 3 .*have: 2, 4"):
        T2IPipeline.from_pretrained(out, device="cpu", checkpoint=3)


@pytest.mark.slow
def test_clip_curve_scores_every_checkpoint_per_field(trained, tmp_path, capsys, monkeypatch):
    from typer.testing import CliRunner

    from recaption import io as rio
    from recaption.captioners.testing import tiny_clip
    from recaption.cli import app, main
    from recaption.eval.curve import clip_curve, parse_model_specs
    from recaption.eval.report import read_points
    from recaption.t2i.generate import T2IPipeline

    recs = make_records(8, missing_every=0)
    with rio.open_writer(str(tmp_path / "evalset"), "wds") as w:
        for r in recs:
            w.write(r)
    clip = tiny_clip(str(tmp_path / "clip"))
    models = parse_model_specs([f"a={trained.out}", f"b={trained.out}"])
    loads, real = [], T2IPipeline.from_pretrained.__func__
    monkeypatch.setattr(T2IPipeline, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(a[0]) or real(cls, *a, **k)))
    res = clip_curve(models, clip, str(tmp_path / "evalset"), ["alt", "descriptive"], limit=5, steps=3,
                     out_dir=tmp_path / "curve", progress=False)
    assert res["n_prompts"] == {"alt": 5, "descriptive": 5}
    assert len(loads) == 2  # one whole-pipeline load per model; checkpoints are swapped in
    for f in ("alt", "descriptive"):
        pts = res["points"][f]
        assert [(m, s) for m, s, _ in pts] == [("a", 2), ("a", 4), ("b", 2), ("b", 4)]
        assert [v for m, _, v in pts if m == "a"] == [v for m, _, v in pts if m == "b"]  # same run, same seeds
        assert read_points(tmp_path / "curve" / f"points_{f}.tsv") == [tuple(p) for p in pts]
        means = res["unclamped_means"][f]
        assert [round(max(v, 0.0), 4) for _, _, v in means] == [v for _, _, v in pts]
        assert (tmp_path / "curve" / f"clip_vs_step_{f}.png").stat().st_size > 1000
    assert "| a | 2 |" in (tmp_path / "curve" / "curve.md").read_text()
    with pytest.raises(ValueError, match="given twice"):
        parse_model_specs([trained.out, trained.out])
    r = CliRunner().invoke(app, ["eval", "clip-curve", "--model", trained.out, "--records", str(tmp_path / "evalset"),
                                 "--clip", clip, "--fields", "alt", "--limit", "2", "--steps", "2",
                                 "--out", str(tmp_path / "c2")])
    assert r.exit_code == 0, r.output
    assert "CLIP score: alt" in r.output and (tmp_path / "c2" / "clip_vs_step_alt.png").exists()
    with pytest.raises(SystemExit) as e:
        main(["eval", "clip-curve", "--model", trained.out, "--records", str(tmp_path / "evalset"), "--clip", clip,
              "--fields", "nope", "--limit", "3", "--out", str(tmp_path / "c3")])
    assert e.value.code == 2 and "no captions in field(s) nope" in capsys.readouterr().err


@pytest.mark.parametrize("text_mode", ["pretrain", "joint"])
def test_bf16_mixed_precision_trains_samples_and_exports_float32(tmp_path, vae_dir, text_mode):
    """The path a GPU run takes (accelerate bf16 autocast), exercised on CPU, where bf16 autocast also exists."""
    from diffusers import UNet2DConditionModel

    from recaption.t2i.train import make_accelerator, train_t2i

    make_accelerator("no")  # as when an earlier run in this process trained in float32 (CI's order did this)
    cfg = tiny_cfg(tmp_path, vae_dir, steps=2, mixed_precision="bf16", text_mode=text_mode, sample_every=2,
                   sample_steps=2)
    train_t2i(cfg, records=make_records(12))
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "run" / "unet")
    params = list(unet.parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params)
    rows = (tmp_path / "run" / "logs" / "train.csv").read_text().splitlines()
    assert rows[-1].split(",")[0] == "2" and "nan" not in rows[-1]


def test_use_checkpoint_swaps_a_jointly_trained_text_encoder_too(tmp_path, vae_dir):
    from recaption.t2i.generate import T2IPipeline
    from recaption.t2i.train import train_t2i

    cfg = tiny_cfg(tmp_path, vae_dir, steps=4, text_mode="joint", keep_checkpoints=2)
    train_t2i(cfg, records=make_records(12))
    at2 = T2IPipeline.from_pretrained(cfg.out, device="cpu", checkpoint=2)
    pipe = T2IPipeline.from_pretrained(cfg.out, device="cpu")  # the final export: step 4's text encoder
    t_final = {k: v.clone() for k, v in pipe.text.model.state_dict().items()}
    pipe.use_checkpoint(cfg.out, 2)
    t2 = pipe.text.model.state_dict()
    assert all(torch.equal(t2[k], v) for k, v in at2.text.model.state_dict().items())
    assert not all(torch.equal(t2[k], t_final[k]) for k in t2)  # it did change: the text encoder trained
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 3"):
        pipe.use_checkpoint(cfg.out, 3)


def test_make_accelerator_changes_precision_within_one_process():
    """accelerate refuses a second precision per process; a single-process run resets its state instead."""
    from accelerate.state import AcceleratorState

    from recaption.t2i.train import make_accelerator

    assert make_accelerator("bf16").mixed_precision == "bf16"
    assert make_accelerator("no").mixed_precision == "no"
    assert AcceleratorState().mixed_precision == "no"
    assert make_accelerator("no").mixed_precision == "no"  # same precision again: kept, no reset needed
