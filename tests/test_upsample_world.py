"""The world upsampler (tiny GPT-2 + BPE trained in seconds) and the transformers causal-LM backend; CLI."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from recaption.cli import app  # noqa: E402
from recaption.upsample import Conversation, Upsampler, load_backend  # noqa: E402


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread, and far faster when other jobs load the cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


PAIRS = [("a red circle.", "A large red circle sits in the top left corner of the picture on a plain white background."),
         ("a blue square.", "A small blue square is in the bottom right corner of the picture on a plain black background."),
         ("two green triangles.", "Two green triangles stand side by side in the middle of the picture on a gray background.")]


def _pairs_file(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text("\n".join(json.dumps({"short": s, "descriptive": d}) for s, d in PAIRS * 4) + "\n")
    return p


@pytest.mark.slow
def test_train_world_lm_and_upsample_cli(tmp_path, one_thread):
    """`recaption upsample train` then `recaption upsample --backend DIR`: the group and the subcommand."""
    run = CliRunner()
    model = tmp_path / "wlm"
    r = run.invoke(app, ["upsample", "train", "--data", str(_pairs_file(tmp_path)), "--out", str(model),
                         "--steps", "60", "--batch-size", "8", "--n-embd", "32", "--n-head", "2",
                         "--vocab-size", "300", "--lr", "1e-2"])
    assert r.exit_code == 0, r.output
    meta = json.loads((model / "upsampler.json").read_text())
    assert meta["kind"] == "world-lm" and meta["final_loss"] < 1.0  # it learned the three mappings
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle.\na blue square.\n")
    out = tmp_path / "o.jsonl"
    r = run.invoke(app, ["upsample", "--backend", str(model), "--prompts", str(prompts), "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["backend"].startswith("world:") and rows[0]["prompt"] == "a red circle."
    assert "red circle" in rows[0]["upsampled"] and rows[0]["error"] is None
    assert "blue square" in rows[1]["upsampled"]


@pytest.mark.slow
def test_world_lm_on_world_records(tmp_path, one_thread):
    world = pytest.importorskip("recaption.world.dataset")
    from recaption.upsample.world_lm import WorldLMConfig, train_world_lm
    from recaption.world import truth_caption

    recs = list(world.generate_records(16, seed=3))
    pairs = [(truth_caption(r, "short"), truth_caption(r, "descriptive")) for r in recs]
    path = train_world_lm(pairs, tmp_path / "w", WorldLMConfig(steps=3, batch_size=4, n_embd=32, n_head=2,
                                                               vocab_size=300, n_positions=192, max_new_tokens=20),
                          progress=False)
    be = load_backend(f"world:{path}")
    r = Upsampler(be, short_retries=0).upsample("a red circle.")
    assert r.backend == f"world:{path}" and isinstance(r.upsampled, str)


def test_upsample_cli_needs_prompts_and_out():
    r = CliRunner().invoke(app, ["upsample", "--backend", "template"])
    assert r.exit_code != 0


def _tiny_causal_lm(path, chat_template: str | None):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from recaption.upsample.world_lm import train_tokenizer

    tok = train_tokenizer([s + " " + d for s, d in PAIRS] + ["System User Assistant"], 300)
    if chat_template:
        tok.chat_template = chat_template
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=2048, n_embd=16, n_layer=1, n_head=2)).save_pretrained(path)
    tok.save_pretrained(path)


@pytest.mark.parametrize("template", [None, "{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}\n"
                                            "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"])
def test_transformers_backend_generates(tmp_path, template):
    """A local causal LM by folder; with a chat template it is used, else plain 'Role: text' lines."""
    _tiny_causal_lm(tmp_path / "lm", template)
    be = load_backend(f"hf:{tmp_path / 'lm'}")
    be.max_new_tokens = 24
    conv = Conversation(Upsampler(be, short_retries=0))
    r1 = conv.ask("a red circle")
    r2 = conv.ask("make it blue")
    assert r1.backend.startswith("transformers:") and isinstance(r2.upsampled, str)
    assert r1.words <= 80  # random weights: content is noise, but the plumbing and limits hold
    assert r1.error is None or "too short" in r1.error
