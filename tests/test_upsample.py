"""Prompt upsampling: Appendix C data, word limits, conversation semantics, batch mode, backends, CLI."""

from __future__ import annotations

import json

import pytest

from recaption.upsample import (
    Conversation,
    TemplateBackend,
    Upsampler,
    UpsampleRequest,
    appendix_c,
    cut_to_words,
    read_prompts,
    upsample_file,
)
from recaption.upsample.prompt import clean_output, count_words


class Recording:
    """A fake backend that returns scripted texts and records every request."""

    name = "recording"

    def __init__(self, texts):
        self.texts = list(texts)
        self.requests: list[UpsampleRequest] = []

    def complete(self, request):
        self.requests.append(request)
        return self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]


def test_appendix_c_prompt_is_packaged():
    p = appendix_c()
    assert p.system.startswith("You are part of a team of bots that creates images.")
    assert "Image descriptions must be between 15-80 words. Extra words will be ignored." in p.system
    assert "refactor the entire description to integrate the suggestions" in p.system
    assert [t["role"] for t in p.few_shot] == ["user", "assistant"] * 3
    assert 'for the user input : "make the light red"' in p.few_shot[2]["content"]
    assert "the blade glows with a red light" in p.few_shot[3]["content"]
    msgs = p.messages("a cat")
    assert msgs[0]["role"] == "system" and len(msgs) == 8 and msgs[-1]["content"].endswith('"a cat"')


def test_cut_to_words_prefers_sentence_end():
    s1 = " ".join(["w"] * 49) + " end."  # 50 words, ends a sentence
    s2 = " ".join(["x"] * 49) + " more."
    out = cut_to_words(s1 + " " + s2, 80)
    assert out == s1 and count_words(out) == 50
    no_stop = " ".join(f"w{i}" for i in range(120))
    assert cut_to_words(no_stop, 80) == " ".join(f"w{i}" for i in range(80))
    # a sentence end that would leave fewer than 15 words is not used
    early = "Short one. " + " ".join(["y"] * 100)
    assert count_words(cut_to_words(early, 80)) == 80
    assert clean_output('  [ "a red car on a road" ] ') == "a red car on a road"


def test_long_output_cut_and_short_output_retried_then_flagged():
    long = ("A red car parks by the sea. " * 20).strip()  # 140 words
    up = Upsampler(Recording([long]))
    r = up.upsample("a red car")
    assert r.cut and r.error is None and 15 <= r.words <= 80 and r.upsampled.endswith(".")
    be = Recording(["too short", "still short", "nope", "never reached"])
    r = Upsampler(be, short_retries=2).upsample("a car")
    assert len(be.requests) == 3 and r.attempts == 3
    assert r.error and "too short" in r.error and r.words == 1
    be = Recording(["short", "a red car with gleaming chrome parked on a quiet street under a soft evening sky "
                             "with warm light"])
    r = Upsampler(be).upsample("a car")
    assert r.error is None and r.attempts == 2 and r.words >= 15


def test_conversation_sends_previous_turn_and_new_starts_afresh():
    be = Recording(["a pale figure with long white hair holds a sword high in a dark forest, the blade glowing "
                    "with a soft blue light on the trees around him.",
                    "a pale figure with long white hair holds a sword high in a dark forest, the blade glowing "
                    "with a warm red light on the trees around him.",
                    "a frog in a jacket plays dominoes with an old raccoon at a worn table covered in green cloth "
                    "in a forest clearing."])
    conv = Conversation(Upsampler(be))
    r1 = conv.ask("a man holding a sword")
    conv.ask("make the light red")
    conv.new("draw a frog playing dominoes")
    first, second, third = be.requests
    assert first.history == () and second.history == (("a man holding a sword", r1.upsampled),)
    assert second.messages[-2] == {"role": "assistant", "content": r1.upsampled}
    assert 'input : "a man holding a sword"' in second.messages[-3]["content"]
    assert len(second.messages) == len(first.messages) + 2
    assert third.history == () and len(third.messages) == len(first.messages)


def test_template_backend_on_all_200_drawbench_prompts(tmp_path):
    from recaption.eval.drawbench import load_prompts

    prompts = tmp_path / "db.tsv"
    prompts.write_text("prompt\n" + "\n".join(p.prompt for p in load_prompts()) + "\n")
    out = tmp_path / "up.jsonl"
    summary = upsample_file(Upsampler(TemplateBackend()), prompts, out, progress=False)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 200 and summary["errors"] == 0
    assert all(15 <= r["words"] <= 80 and r["words"] == count_words(r["upsampled"]) for r in rows)
    assert all(r["upsampled"].startswith(r["prompt"].rstrip(".")[:20]) for r in rows if r["words"] < 80)
    assert "not an LLM" in rows[0]["backend"]


def test_template_follow_up_keeps_previous_description():
    conv = Conversation(Upsampler(TemplateBackend()))
    a = conv.ask("a man holding a sword")
    b = conv.ask("make the light red")
    assert b.upsampled.startswith("a man holding a sword.") and "Changed: make the light red." in b.upsampled
    assert a.words <= b.words <= 80


def test_read_prompts_formats(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    (tmp_path / "b.tsv").write_text("index\tprompt\n0\tone\n1\ttwo\n")
    (tmp_path / "c.jsonl").write_text('{"prompt": "one"}\n{"prompt": "two"}\n')
    for f in ("a.txt", "b.tsv", "c.jsonl"):
        assert read_prompts(tmp_path / f) == ["one", "two"]
    (tmp_path / "d.jsonl").write_text('{"text": "one"}\n')
    with pytest.raises(ValueError, match="d.jsonl:1"):
        read_prompts(tmp_path / "d.jsonl")
    with pytest.raises(FileNotFoundError):
        read_prompts(tmp_path / "missing.txt")


def test_batch_resume_skips_done(tmp_path):
    (tmp_path / "p.txt").write_text("a red car\na blue cat\n")
    out = tmp_path / "o.jsonl"
    upsample_file(Upsampler(TemplateBackend()), tmp_path / "p.txt", out, progress=False)
    s = upsample_file(Upsampler(TemplateBackend()), tmp_path / "p.txt", out, resume=True, progress=False)
    assert s["skipped"] == 2 and s["written"] == 0 and len(out.read_text().splitlines()) == 2


def test_load_backend_specs(tmp_path):
    from recaption.upsample.backends import resolve_spec

    assert resolve_spec("template") == ("template", "")
    assert resolve_spec("http://localhost:8000/v1") == ("openai", "http://localhost:8000/v1")
    assert resolve_spec("world:/x") == ("world", "/x")
    assert resolve_spec("hf:gpt2") == ("transformers", "gpt2")
    (tmp_path / "upsampler.json").write_text("{}")
    assert resolve_spec(str(tmp_path)) == ("world", str(tmp_path))


def test_upsample_cli_template_and_user_error(tmp_path, capsys):
    from typer.testing import CliRunner

    from recaption.cli import app, main

    (tmp_path / "p.tsv").write_text("index\tcategory\tprompt\n0\tColors\tA red colored car.\n1\tText\tA sign.\n")
    out = tmp_path / "o.jsonl"
    r = CliRunner().invoke(app, ["upsample", "--backend", "template", "--prompts", str(tmp_path / "p.tsv"),
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "2/2 upsampled" in r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["prompt"] for x in rows] == ["A red colored car.", "A sign."]
    with pytest.raises(SystemExit) as e:
        main(["upsample", "--prompts", str(tmp_path / "p.tsv"), "--out", str(out)])
    assert e.value.code == 2 and "--backend" in capsys.readouterr().err
