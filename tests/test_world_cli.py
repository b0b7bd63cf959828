"""The world's commands: make, parse, prompts, judge and the top-level demo."""

from __future__ import annotations

import json
import random
import subprocess
import sys

from typer.testing import CliRunner

from recaption.cli import app
from recaption.world.prompts import load_prompts, scene_breaking, scene_for
from recaption.world.render import render

runner = CliRunner()


def _ok(args):
    r = runner.invoke(app, args)
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


def test_make_then_parse(tmp_path):
    out = tmp_path / "ds"
    summary = json.loads(_ok(["world", "make", "--n", "40", "--seed", "51", "--out", str(out), "--format", "folder",
                              "--shard-size", "25", "--no-progress"]).strip().splitlines()[-1])
    assert summary["written"] == 40 and summary["shards"] == 2
    assert len(list(out.rglob("*.png"))) == 40
    parsed = tmp_path / "parsed.jsonl"
    s = json.loads(_ok(["world", "parse", "--input", str(out), "--out", str(parsed), "--no-progress"]).strip()
                   .splitlines()[-1])
    assert s["records"] == 40 and s["exact_rate"] == 1.0
    lines = [json.loads(x) for x in parsed.read_text().splitlines()]
    assert {"key", "scene", "exact"} <= set(lines[0]) and {"background", "objects", "sign"} <= set(lines[0]["scene"])


def test_prompts_and_judge(tmp_path):
    pf = tmp_path / "val.jsonl"
    s = json.loads(_ok(["world", "prompts", "--split", "val", "--out", str(pf)]).strip())
    assert s["prompts"] == 120 and len(s["categories"]) == 8
    prompts = load_prompts(str(pf))[::10]
    rng = random.Random(0)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for p in prompts:
        render(scene_for(p, rng)).save(imgs / f"{p.id}_0.png")
        render(scene_breaking(p, rng)[0]).save(imgs / f"{p.id}_1.png")
    out = tmp_path / "verdicts.jsonl"
    s = json.loads(_ok(["world", "judge", "--prompts", str(pf), "--images", str(imgs), "--out", str(out),
                        "--no-progress"]).strip().splitlines()[-1])
    assert s["images"] == 2 * len(prompts) and s["accuracy"] == 0.5
    verdicts = {v["image"]: v for v in map(json.loads, out.read_text().splitlines())}
    for p in prompts:
        assert verdicts[f"{p.id}_0.png"]["correct"] and not verdicts[f"{p.id}_1.png"]["correct"]
        assert all("reason" in r for r in verdicts[f"{p.id}_1.png"]["results"])


def test_demo_writes_a_contact_sheet(tmp_path):
    from PIL import Image

    out = tmp_path / "demo"
    text = _ok(["demo", "--out", str(out), "--n", "30", "--no-progress"])
    assert "30 records" in text and "alt-text mentions" in text and "descriptive:" in text
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width >= 1000 and sheet.height >= 1000
    assert json.loads((out / "summary.json").read_text())["records"] == 30


def test_user_errors_are_one_line(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": "x", "text": "t", "constraints": [{"type": "text", "text": "A"}]}) + "\n")
    Image = __import__("PIL.Image", fromlist=["Image"])
    Image.new("RGB", (64, 64)).save(tmp_path / "imgs" / "nobody_0.png")
    cases = [["world", "parse", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o.jsonl")],
             ["world", "judge", "--prompts", str(tmp_path / "p.jsonl"), "--images", str(tmp_path / "imgs"),
              "--out", str(tmp_path / "v.jsonl")]]
    for args in cases:
        r = subprocess.run([sys.executable, "-c", "from recaption.cli import main; main()", *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("error:") and "Traceback" not in r.stderr
    assert "nobody_0.png" in r.stderr
