"""World evaluation with a fake generator: guidance chosen on val, applied to test, oracle-judged per category;
world CLIP score; report files (JSON, markdown, bars, grids)."""

from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("recaption.world.judge")

from recaption.world.prompts import prompt_suite, scene_breaking, scene_for  # noqa: E402
from recaption.world.render import render  # noqa: E402


def _subset(split, per_cat):
    out, seen = [], {}
    for p in prompt_suite(split):
        if seen.get(p.category, 0) < per_cat:
            out.append(p)
            seen[p.category] = seen.get(p.category, 0) + 1
    return out


def fake_generator(prompts_by_text, good_from: float = 2.0, log: list | None = None):
    """Draws a scene satisfying the prompt when guidance >= good_from, else one breaking it."""

    def fn(texts, guidance, seed):
        if log is not None:
            log.append((len(texts), guidance, seed))
        rng = random.Random(seed)
        out = []
        for t in texts:
            p = prompts_by_text[t]
            scene = scene_for(p, rng) if guidance >= good_from else scene_breaking(p, rng)[0]
            out.append(render(scene, 64))
        return out

    return fn


def test_guidance_chosen_on_val_then_applied_to_test(tmp_path):
    from recaption.eval.world_eval import VAL_SEED, run_world_eval

    val, test = _subset("val", 2), _subset("test", 3)
    by_text = {p.text: p for p in val + test}
    calls: list = []
    good = fake_generator(by_text, 2.0, calls)
    bad = fake_generator(by_text, 99.0)
    res = run_world_eval([], tmp_path / "out", guidances=[1.0, 2.0, 3.0], seeds=[0, 1], n_boot=200,
                         generate_fns={"good": good, "bad": bad}, grid_prompts=2, val_prompts=val,
                         test_prompts=test)
    g = res["good"]
    assert g["guidance"] == 2.0  # best on val; 3.0 ties and the lower one wins
    assert g["val_shares"] == {"1.0": 0.0, "2.0": 100.0, "3.0": 100.0}
    # val prompts only at the val seed, for each guidance; then test prompts at the chosen guidance per seed
    assert calls[:3] == [(len(val), 1.0, VAL_SEED), (len(val), 2.0, VAL_SEED), (len(val), 3.0, VAL_SEED)]
    assert calls[3:] == [(len(test), 2.0, 0), (len(test), 2.0, 1)]
    assert g["overall"]["percent"] == 100.0 and g["overall"]["total"] == 2 * len(test)
    assert set(g["categories"]) == {p.category for p in test}
    assert res["bad"]["overall"]["percent"] == 0.0
    out = tmp_path / "out"
    saved = json.loads((out / "world.json").read_text())
    assert saved["good"]["guidance"] == 2.0 and "_images" not in saved["good"]
    md = (out / "world.md").read_text()
    assert "guidance (chosen on val)" in md and "| **overall** | 100.0 [100.0, 100.0] | 0.0 [0.0, 0.0] |" in md
    assert (out / "world_categories.png").is_file()
    grids = sorted((out / "grids").iterdir())
    assert len(grids) == 2 and grids[0].suffix == ".png"


def test_world_clip_score_and_upsampled_prompts_judged_on_original(tmp_path):
    from test_eval_clipscore import build_tiny_clip

    from recaption.clip import load_clip
    from recaption.eval.clipscore import clip_scores
    from recaption.eval.world_eval import evaluate_world_model

    val, test = _subset("val", 1), _subset("test", 1)
    by_text = {p.text: p for p in val + test}
    seen_texts: list[str] = []

    def upsample(texts):
        return [f"UP {t}" for t in texts]

    def gen(texts, guidance, seed):
        seen_texts.extend(texts)
        return fake_generator(by_text)([t.removeprefix("UP ") for t in texts], guidance, seed)

    build_tiny_clip(tmp_path / "clip")
    clip = load_clip(str(tmp_path / "clip"))
    res = evaluate_world_model(gen, val, test, guidances=[2.0], seeds=[0], clip=clip, upsample=upsample, n_boot=100)
    assert all(t.startswith("UP ") for t in seen_texts)  # the generator got the upsampled prompts
    assert res["overall"]["percent"] == 100.0 and res["upsampled"]  # the judge checked the originals
    images = fake_generator(by_text)([p.text for p in test], 2.0, 0)
    direct = clip_scores(clip, images, [p.text for p in test])[0]
    assert res["clip_score"]["n"] == len(test)
    assert res["clip_score"]["score"] == pytest.approx(max(sum(direct) / len(direct), 0.0), abs=1e-4)


def test_limits_keep_every_category():
    from recaption.eval.world_eval import _per_category

    sub = _per_category(prompt_suite("test"), 16)
    cats = {p.category for p in prompt_suite("test")}
    assert len(sub) == 16 and {p.category for p in sub} == cats


@pytest.mark.slow
def test_eval_world_cli_on_a_tiny_trained_t2i_model(tmp_path):
    """`recaption eval world --model DIR` end to end: a t2i model trained for 2 steps (images are noise, so the
    shares are ~0; the point is the plumbing: generation, oracle, guidance choice, report)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster, far faster on a loaded machine
    from typer.testing import CliRunner

    from recaption.cli import app
    from recaption.t2i.components import build_vae
    from recaption.t2i.config import T2ITrainConfig
    from recaption.t2i.train import train_t2i
    from recaption.world.dataset import generate_records

    torch.manual_seed(0)
    vae = build_vae("vae-tiny")
    vae.save_pretrained(tmp_path / "vae")
    cfg = T2ITrainConfig(out=str(tmp_path / "run"), vae=str(tmp_path / "vae"), text_encoder="t5-tiny",
                         text_pretrain_steps=0, unet="unet-tiny", steps=2, batch_size=4, image_size=32, log_every=1,
                         checkpoint_every=2, sample_every=0, warmup_steps=1, cache_dir=str(tmp_path / "cache"))
    train_t2i(cfg, records=list(generate_records(8, seed=0, size=32)))
    out = tmp_path / "eval"
    r = CliRunner().invoke(app, ["eval", "world", "--model", str(tmp_path / "run"), "--out", str(out),
                                 "--guidance", "1,2", "--val-limit", "4", "--test-limit", "8", "--steps", "1",
                                 "--grid-prompts", "1", "--n-boot", "50"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "world.json").read_text())["run"]
    assert res["guidance"] in (1.0, 2.0) and set(res["val_shares"]) == {"1.0", "2.0"}
    assert res["n_test"] == 8 and res["overall"]["total"] == 8 and len(res["categories"]) == 8
    assert (out / "world.md").is_file() and len(list((out / "grids").iterdir())) == 1
    torch.set_num_threads(threads)
