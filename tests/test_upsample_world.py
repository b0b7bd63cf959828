"""The world upsampler (tiny GPT-2 + BPE trained in seconds) and the transformers causal-LM backend; CLI."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from recaption.cli import UserError, app  # noqa: E402
from recaption.upsample import Conversation, Upsampler, UpsampleRequest, load_backend  # noqa: E402


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


# -- follow-up edits: the world's conversation semantics -------------------------------------------------------
def _scenes(n, seed=11):
    from recaption.world.sampler import sample_scene, scene_rng

    return [sample_scene(scene_rng(seed, i)) for i in range(n)]


def _by_cell(scene):
    return {o.cell: o.kind() for o in scene.objects}


def test_edit_triples_change_exactly_the_named_thing():
    """Each triple's target scene differs from its source in exactly the way its instruction names, and the
    instruction's object phrase picks out exactly the edited object."""
    import re

    from recaption.world import COLORS, FILLS, POSITIONS, SHAPES
    from recaption.world.edits import MOVE_WORDS, edit_triples

    triples = edit_triples(_scenes(300), seed=2)
    assert len(triples) >= 250
    assert {t.edit.kind for t in triples} == {"color", "size", "fill", "move", "add", "remove", "background"}
    sizes = ("small", "medium", "large")
    for t in triples:
        s, d, e, text = t.source, t.target, t.edit, t.instruction
        assert not s.same_as(d), text
        assert (d.ground, d.sign) == (s.ground, s.sign)
        if e.kind == "background":
            assert d.background != s.background and d.background in text and _by_cell(d) == _by_cell(s)
            continue
        assert d.background == s.background
        src, dst = _by_cell(s), _by_cell(d)
        if e.kind == "add":
            new = set(dst) - set(src)
            assert len(new) == 1 and len(dst) == len(src) + 1 and {c: dst[c] for c in src} == src
            shape, color = dst[new.pop()][:2]
            assert f"{color} {shape}" in text and s.sign is None or new != {s.sign.cell}
            continue
        # the object phrase: "the [colour] shape" names exactly one source object, the edited one
        m = re.search(rf"\bthe (?:({'|'.join(COLORS)}) )?({'|'.join(SHAPES)})\b", text)
        assert m, text
        named = [i for i, o in enumerate(s.objects) if o.shape == m.group(2) and m.group(1) in (None, o.color)]
        assert named == [e.target], text
        old = s.objects[e.target]
        rest = {c: k for c, k in src.items() if c != old.cell}
        if e.kind == "remove":
            assert dst == rest and len(s.objects) >= 2
            continue
        if e.kind == "move":
            cell = POSITIONS[e.value]
            assert cell not in src and MOVE_WORDS[e.value] in text
            assert dst == {**rest, cell: old.kind()}
            continue
        assert set(dst) == set(src) and {c: k for c, k in dst.items() if c != old.cell} == rest
        new_kind = dst[old.cell]  # (shape, colour, size, fill): only the named attribute moved
        changed = [i for i in range(4) if new_kind[i] != old.kind()[i]]
        assert changed == [{"color": 1, "size": 2, "fill": 3}[e.kind]], text
        if e.kind == "color":
            assert new_kind[1] in COLORS and text.endswith(new_kind[1])
        elif e.kind == "fill":
            assert new_kind[3] in FILLS
            assert text.endswith({"outline": "outlined"}.get(new_kind[3], new_kind[3])) or new_kind[3] in text
        else:
            step = sizes.index(new_kind[2]) - sizes.index(old.size)
            assert step == (1 if ("bigger" in text or "larger" in text) else -1), text


def test_edit_descriptions_parse_back_to_their_scenes():
    """The before/after descriptions are the true captions of the two scenes (read back by the parser used
    to measure the model), written with one seed so unchanged sentences keep their words."""
    import random

    from recaption.world.captions import descriptive_caption
    from recaption.world.edits import edit_named, edit_reflected, edit_triples, parse_description

    for i, s in enumerate(_scenes(150, seed=12)):
        assert parse_description(descriptive_caption(s, random.Random(i))).same_as(s)
    triples = edit_triples(_scenes(150, seed=13), seed=0)
    for t in triples:
        assert parse_description(t.before).same_as(t.source) and parse_description(t.after).same_as(t.target)
        assert edit_reflected(t, t.after) and not edit_reflected(t, t.before)
        assert edit_named(t, t.after) and not edit_named(t, t.before)
    same_words = [t for t in triples if t.edit.kind in ("color", "fill", "background")]
    first = [t.before.split(". ")[0] == t.after.split(". ")[0] for t in same_words]
    assert sum(first) / len(first) > 0.5  # rewritten in place, not re-phrased at random
    assert parse_description("A large red circle is in the center.") is None  # no background, no default


def _world_dataset(tmp_path, n=12):
    from recaption.world.dataset import WorldConfig, write_dataset

    out = tmp_path / "world"
    write_dataset(str(out), n, WorldConfig(seed=5, size=24), format="folder", workers=1, progress=False)
    return out


class _Spy:
    """Wraps ``model.generate`` to record the token ids the backend feeds the model."""

    def __init__(self, model):
        self.inner, self.inputs = model.generate, []

    def __call__(self, x, **kw):
        self.inputs.append(x[0].tolist())
        return self.inner(x, **kw)


@pytest.mark.slow
def test_world_lm_edit_path_through_conversation(tmp_path, one_thread):
    """A follow-up request reaches the world LM as `<bos> previous <edit> request <sep>`; `new` starts afresh."""
    from recaption.upsample.world_lm import EDIT, WorldLMConfig, load_training_text, train_world_lm

    pairs, edits = load_training_text(_world_dataset(tmp_path), seed=1)
    assert len(pairs) == 12 and 8 <= len(edits) <= 12 and all(len(e) == 3 for e in edits)
    path = train_world_lm(pairs, tmp_path / "w", WorldLMConfig(steps=30, batch_size=8, n_embd=32, n_head=2,
                                                               vocab_size=300, lr=1e-2, max_new_tokens=40, n_positions=768),
                          progress=False, edits=edits)
    meta = json.loads((path / "upsampler.json").read_text())
    assert meta["edits"] == len(edits) and meta["longest_tokens"] <= meta["config"]["n_positions"]
    be = load_backend(f"world:{path}", do_sample=True, seed=0)  # greedy, a 30-step model writes only spaces
    assert be.edits
    be.model.generation_config.min_new_tokens = 8  # ... or ends at once; the plumbing is what is tested
    spy = be.model.generate = _Spy(be.model)
    tok = be.tok
    conv = Conversation(Upsampler(be, short_retries=0, min_words=1))
    r1 = conv.ask("a red circle.")
    assert r1.upsampled
    assert spy.inputs[-1] == [tok.bos_token_id, *tok.encode(" a red circle."), tok.sep_token_id]
    r2 = conv.ask("make the circle blue")
    edit_id = tok.convert_tokens_to_ids(EDIT)
    assert spy.inputs[-1] == [tok.bos_token_id, *tok.encode(" " + r1.upsampled), edit_id,
                              *tok.encode(" make the circle blue"), tok.sep_token_id]
    assert tok.decode(spy.inputs[-1]).startswith("<|bos|> " + r1.upsampled[:20])
    assert isinstance(r2.upsampled, str) and EDIT not in r2.upsampled
    conv.new("a blue square.")
    assert spy.inputs[-1] == [tok.bos_token_id, *tok.encode(" a blue square."), tok.sep_token_id]


def test_world_lm_without_edits_ignores_history(tmp_path, one_thread, caplog):
    """An old-style checkpoint (four special tokens, config without the edit fields, no edit count) loads,
    says it ignores the conversation, and upsamples a follow-up request on its own."""
    import logging

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([s + " " + d for s, d in PAIRS], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|pad|>", "<|bos|>", "<|sep|>", "<|eos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|bos|>", eos_token="<|eos|>",
                                  pad_token="<|pad|>", sep_token="<|sep|>")
    old = tmp_path / "old"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=192, n_embd=16, n_layer=1, n_head=2)).save_pretrained(old)
    tok.save_pretrained(old)
    cfg = {"vocab_size": 300, "n_layer": 1, "n_head": 2, "n_embd": 16, "n_positions": 192, "steps": 1,
           "batch_size": 1, "lr": 1e-3, "warmup": 1, "seed": 0, "max_new_tokens": 12}
    (old / "upsampler.json").write_text(json.dumps({"kind": "world-lm", "config": cfg, "pairs": 3,
                                                    "final_loss": 5.0}))
    with caplog.at_level(logging.INFO, logger="recaption.upsample.world_lm"):
        be = load_backend(str(old))
    assert not be.edits and be.cfg.n_positions == 192
    assert any("trained without edits" in r.message for r in caplog.records)
    spy = be.model.generate = _Spy(be.model)
    conv = Conversation(Upsampler(be, short_retries=0, min_words=1))
    conv.ask("a red circle.")
    conv.ask("make it blue")
    assert spy.inputs[-1] == [tok.bos_token_id, *tok.encode(" make it blue"), tok.sep_token_id]


@pytest.mark.slow
def test_upsample_train_cli_on_world_records_learns_edits(tmp_path, one_thread):
    """`recaption upsample train` on world records builds edit triples from their scenes; a JSONL of pairs
    has none; a bad --edit-share is a one-line user error."""
    from recaption.upsample.world_lm import load_training_text

    run = CliRunner()
    small = ["--steps", "4", "--batch-size", "4", "--n-embd", "32", "--n-head", "2", "--vocab-size", "300"]
    r = run.invoke(app, ["upsample", "train", "--data", str(_world_dataset(tmp_path, 8)), "--out",
                         str(tmp_path / "m"), "--edit-share", "0.5", "--arch", "llama", "--n-positions", "768", *small])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "m" / "upsampler.json").read_text())
    assert meta["edits"] > 0 and meta["config"]["edit_share"] == 0.5 and "follow-up edits" in r.output
    be = load_backend(str(tmp_path / "m"))
    assert type(be.model).__name__ == "LlamaForCausalLM" and be.edits
    ids = be.input_ids(UpsampleRequest("make the star red", history=(("a star.", "A red star."),)))
    assert ids[-1] == be.tok.sep_token_id and be.tok.convert_tokens_to_ids("<|edit|>") in ids
    assert load_training_text(_pairs_file(tmp_path))[1] == []
    r = run.invoke(app, ["upsample", "train", "--data", str(_pairs_file(tmp_path)), "--out", str(tmp_path / "x"),
                         "--edit-share", "1.5", *small])
    assert isinstance(r.exception, UserError) and "edit_share" in str(r.exception)  # main() prints it, exit 2
    r = run.invoke(app, ["upsample", "train", "--data", str(_pairs_file(tmp_path)), "--out", str(tmp_path / "x"),
                         "--arch", "rnn", *small])
    assert isinstance(r.exception, UserError) and "arch" in str(r.exception)
    assert not (tmp_path / "x").exists()
