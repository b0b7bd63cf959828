"""DrawBench: the published GPT-4V verdicts give the paper's 70.4 / 49.0 / 46.9 and our per-category figures;
judging goes through the real openai client to a local chat-completions server."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from recaption.eval.drawbench import aggregate, load_prompts, load_verdicts, parse_key, parse_verdict
from recaption.eval.stats import fmt_pct, round_half_up

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dalle3-eval"
PACKAGED_TSV = Path(__file__).resolve().parents[1] / "src" / "recaption" / "data" / "drawbench.tsv"
# The published verdicts travel with the tests (tests/data, MIT), so these checks never skip.
GPT4V = Path(__file__).resolve().parent / "data" / "drawbench_gpt4v"


def test_packaged_prompts_match_shared_copy():
    prompts = load_prompts()
    assert len(prompts) == 200 and prompts[0].prompt == "A red colored car." and prompts[0].category == "Colors"
    counts = {}
    for p in prompts:
        counts[p.category] = counts.get(p.category, 0) + 1
    assert counts == {"Colors": 25, "Conflicting": 10, "Counting": 19, "DALL-E": 20, "Descriptions": 20,
                      "Gary Marcus et al.": 10, "Misspellings": 10, "Positional": 20, "Rare Words": 7,
                      "Reddit": 38, "Text": 21}
    if (SHARED / "drawbench.tsv").is_file():
        assert [p.prompt for p in load_prompts(SHARED / "drawbench.tsv")] == [p.prompt for p in prompts]


def test_rounding_is_half_up():
    assert round_half_up(46.875) == 46.9 and round_half_up(0.25) == 0.3 and round(0.25, 1) == 0.2  # not round()
    assert fmt_pct(70.375) == "70.4" and fmt_pct(49.0) == "49.0"


def test_parse_verdict_reads_the_end():
    assert parse_verdict("The car is red.\n\nCorrect") is True
    assert parse_verdict("It looks correct at first, but the count is wrong.\n\nIncorrect.") is False
    assert parse_verdict("Incorrect colour... on reflection: correct") is True
    assert parse_verdict("no verdict here") is None
    assert parse_key("/root/drawbench/sdxl_base_refiner/17_3.png") == ("sdxl_base_refiner", 17, 3)


@pytest.mark.parametrize("model,paper", [("dalle3", "70.4"), ("dalle2", "49.0"), ("sdxl", "46.9")])
def test_published_verdicts_reproduce_table1(model, paper):
    verdicts = load_verdicts(GPT4V / f"{model}.json")
    prompts = load_prompts()
    res = aggregate(verdicts, prompts, n_boot=200, seed=0)
    assert fmt_pct(res["overall"]["percent"]) == paper
    assert res["n_images"] == 800 and res["n_prompts"] == 200 and res["missing_prompts"] == []
    lo, hi = res["overall"]["ci95"]
    assert lo < res["overall"]["percent"] < hi and hi - lo < 15
    # our parser agrees with every published verdict
    assert all(parse_verdict(v["response"]) == v["correct"] for v in verdicts.values())
    # each per-category figure equals a direct count (independent of our aggregation code)
    cat = {int(r["index"]): r["category"] for r in csv.DictReader(PACKAGED_TSV.open(), delimiter="\t")}
    base = 1 if model == "dalle2" else 0
    assert res["index_base"] == base
    direct: dict[str, list[int]] = {}
    for k, v in verdicts.items():
        idx = int(k.rsplit("/", 1)[1].split("_")[0]) - base
        c = direct.setdefault(cat[idx], [0, 0])
        c[0] += bool(v["correct"])
        c[1] += 1
    assert set(res["categories"]) == set(direct)
    for c, (ok, n) in direct.items():
        assert res["categories"][c]["correct"] == ok and res["categories"][c]["total"] == n
        assert res["categories"][c]["percent"] == pytest.approx(100 * ok / n)
        assert n == 4 * sum(1 for x in cat.values() if x == c)


def test_dalle2_keys_count_from_one():
    """DALL-E 2's indices run 1..200 and the responses describe prompt index-1 (checked on colour prompts)."""
    v = load_verdicts(GPT4V / "dalle2.json")
    idx = sorted({parse_key(k)[1] for k in v})
    assert idx[0] == 1 and idx[-1] == 200
    prompts = load_prompts()
    hits = 0
    for k, d in v.items():
        i = parse_key(k)[1] - 1
        if prompts[i].category == "Colors":
            colour = prompts[i].prompt.split()[1].lower()  # "A red colored car." -> red
            hits += colour in d["response"].lower()
    assert hits >= 0.8 * 100


def test_bootstrap_is_seeded_and_resamples_prompts():
    from recaption.eval.stats import bootstrap_share

    per_prompt = [[True] * 4] * 5 + [[False] * 4] * 5
    a, b = bootstrap_share(per_prompt, seed=1), bootstrap_share(per_prompt, seed=1)
    assert a == b and a.percent == 50.0 and a.lo < 50 < a.hi
    assert bootstrap_share([[True, False]] * 10, seed=1).lo == 50.0  # every prompt at 50%: no spread


def test_cli_aggregates_published_verdicts(tmp_path):
    from typer.testing import CliRunner

    from recaption.cli import app

    r = CliRunner().invoke(app, ["eval", "drawbench", "--verdicts", str(GPT4V / "dalle3.json"), "--verdicts",
                                 str(GPT4V / "sdxl.json"), "--out", str(tmp_path), "--n-boot", "100"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "drawbench.json").read_text())
    assert fmt_pct(res["dalle3"]["overall"]["percent"]) == "70.4"
    assert fmt_pct(res["sdxl"]["overall"]["percent"]) == "46.9"
    md = (tmp_path / "drawbench.md").read_text()
    assert "| **overall** | 70.4 [" in md and "Positional" in md
    assert (tmp_path / "drawbench.png").stat().st_size > 1000


def test_judge_through_openai_client_sees_original_prompt(tmp_path):
    from PIL import Image
    from test_upsample_chatserver import ChatServer, completion, last_user_text

    from recaption.eval.drawbench import judge_images, load_judge

    prompts = load_prompts()[:3]
    imgs = tmp_path / "model_up"
    imgs.mkdir()
    for p in prompts:
        for s in range(4):
            Image.new("RGB", (16, 16), (255 if s % 2 == 0 else 0, 0, 0)).save(imgs / f"{p.index}_{s}.png")
    seen = []

    def handler(body):
        content = body["messages"][-1]["content"]
        kinds = [c["type"] for c in content]
        url = next(c["image_url"]["url"] for c in content if c["type"] == "image_url")
        seen.append((kinds, last_user_text(body), url))
        if "A pink colored car." in last_user_text(body):
            return 500, {"error": {"message": "boom"}}, 0
        red = len(url) % 2  # any deterministic property of the image works for a fake judge
        return 200, completion("The car looks fine.\n\n" + ("Correct" if red else "Incorrect.")), 0

    with ChatServer(handler) as srv:
        judge = load_judge(srv.url, model="fake-vision")
        judge.chat.cfg = type(judge.chat.cfg)(**{**judge.chat.cfg.__dict__, "retries": 0})
        verdicts = judge_images(imgs, judge, prompts, out_path=tmp_path / "v.json", progress=False)
    assert len(verdicts) == 12 and json.loads((tmp_path / "v.json").read_text()) == verdicts
    kinds, text, url = seen[0]
    assert kinds == ["text", "image_url", "text"] and url.startswith("data:image/png;base64,")
    assert "judging the faithfulness of images" in text
    # the judge sees the ORIGINAL DrawBench prompt, never the upsampled one
    assert all(t.rstrip().endswith(tuple(p.prompt for p in prompts)) for _, t, _ in seen)
    assert not any(p.upsampled[:40] in t for p in prompts for _, t, _ in seen)
    errs = [k for k, v in verdicts.items() if v.get("error")]
    assert len(errs) == 4 and all(k.startswith("model_up/2_") for k in errs)
    res = aggregate(verdicts, prompts, n_boot=50)
    ok = sum(v["correct"] for v in verdicts.values())
    assert res["overall"]["correct"] == ok and res["n_images"] == 12 and res["judge_errors"] == 4
    from recaption.eval.drawbench import results_table

    table = results_table({"m": res})  # the table says how many verdicts were errors or unparsed
    assert "| responses without a verdict / judge errors (counted incorrect) | 0 / 4 of 12 |" in table


def build_tiny_vlm(path, constant_token: str = "correct"):
    """A tiny random LLaVA (CLIP vision + Llama text) with a chat template; its LM head is zeroed so greedy
    decoding always emits vocabulary id 0, which is ``constant_token``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessorPil,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    words = [constant_token, "<pad>", "<unk>", "<s>", "</s>", "<image>", "user", "assistant", ":", "a", "red", "car"]
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    template = ("{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                "<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %}assistant : {% endif %}")
    proc = LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 16},
                                                                crop_size={"height": 16, "width": 16}),
                          tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          chat_template=template, num_additional_image_tokens=1)
    cfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=16, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, pad_token_id=1,
                         bos_token_id=3, eos_token_id=4),
        image_token_index=vocab["<image>"], vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # all logits equal: greedy picks id 0
    model.save_pretrained(path)
    proc.save_pretrained(path)


@pytest.mark.parametrize("token,expected", [("correct", True), ("incorrect", False)])
def test_local_transformers_vlm_judge(tmp_path, token, expected):
    from PIL import Image

    from recaption.eval.drawbench import TransformersJudge, judge_images, load_judge

    build_tiny_vlm(tmp_path / "vlm", token)
    judge = load_judge(str(tmp_path / "vlm"))
    assert isinstance(judge, TransformersJudge)
    judge.max_new_tokens = 3
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for s in range(4):
        Image.new("RGB", (24, 24), (200, 10 * s, 10)).save(imgs / f"0_{s}.png")
    v = judge_images(imgs, judge, load_prompts()[:1], progress=False)
    assert len(v) == 4 and all(x["correct"] is expected and x["parsed"] for x in v.values())
    assert all(x["response"].split()[-1] == token for x in v.values())


def test_cli_judges_images_then_aggregates(tmp_path):
    from PIL import Image
    from test_upsample_chatserver import ChatServer, completion
    from typer.testing import CliRunner

    from recaption.cli import app

    cats = tmp_path / "cats.tsv"
    cats.write_text("index\tcategory\tprompt\n0\tColors\tA red colored car.\n1\tText\tA sign that says 'hi'.\n")
    imgs = tmp_path / "mymodel"
    imgs.mkdir()
    for i in range(2):
        for s in range(4):
            Image.new("RGB", (16, 16), (255, 0, 0) if i == 0 else (0, 0, 255)).save(imgs / f"{i}_{s}.png")

    def handler(body):
        text = body["messages"][-1]["content"][-1]["text"]
        return 200, completion("Looks right.\n\nCorrect" if "car" in text else "No text.\n\nIncorrect"), 0

    with ChatServer(handler) as srv:
        r = CliRunner().invoke(app, ["eval", "drawbench", "--images", str(imgs), "--judge", srv.url, "--judge-model",
                                     "v", "--categories", str(cats), "--out", str(tmp_path / "out"), "--n-boot", "50"])
    assert r.exit_code == 0, r.output
    verdicts = json.loads((tmp_path / "out" / "verdicts_mymodel.json").read_text())
    assert len(verdicts) == 8 and verdicts["mymodel/0_0.png"]["correct"] is True
    res = json.loads((tmp_path / "out" / "drawbench.json").read_text())["verdicts_mymodel"]
    assert res["categories"]["Colors"]["percent"] == 100.0 and res["categories"]["Text"]["percent"] == 0.0
    assert res["overall"]["percent"] == 50.0 and res["index_base"] == 0
