"""The recaption job: every field kept, captions added with provenance, resume after a crash or kill -9
with every record exactly once, odd and bad images, captioner failures, options, and `recaption run`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time

import pytest
from PIL import Image

from recaption import io as rio
from recaption.io.synthetic import synthetic_records
from recaption.pipeline import RunConfig, decode_image, run
from recaption.pipeline.decode import DecodeError
from recaption.pipeline.oddimages import EITHER_ODD, ERROR_ODD, VALID_ODD, make_odd_folder, odd_images
from recaption.records import Provenance, RecordError

POISON = (255, 0, 255)


class FakeCaptioner:
    """Deterministic: the caption is a function of the mode and the decoded pixels only.

    ``fail_batches``: raise on every multi-image call; ``poison``: raise on any call holding an image whose
    top-left pixel is magenta; ``crash_after``: raise SystemExit after that many calls (a crash mid-job)."""

    name = "fake"
    version = "v0"

    def __init__(self, fail_batches=False, poison=False, crash_after=None):
        self.fail_batches, self.poison, self.crash_after = fail_batches, poison, crash_after
        self.calls = 0
        self.batch_sizes: list[int] = []

    def caption(self, images, mode):
        self.calls += 1
        self.batch_sizes.append(len(images))
        if self.crash_after is not None and self.calls > self.crash_after:
            raise SystemExit("simulated crash")
        if self.fail_batches and len(images) > 1:
            raise RuntimeError("batch went wrong")
        if self.poison and any(im.getpixel((0, 0)) == POISON for im in images):
            raise RuntimeError("poisoned image")
        return [caption_of(im, mode) for im in images]

    def provenance(self, mode):
        return Provenance.now(self.name, self.version, mode, prompt=f"{mode} prompt")


def caption_of(im, mode):
    return f"{mode} {im.size[0]}x{im.size[1]} {hashlib.md5(im.tobytes()).hexdigest()[:10]}"


def _input(path, n=40, fmt="wds", shard_size=10, **kw):
    recs = list(synthetic_records(n, seed=3, **kw))
    for r in recs:  # originals: alt-text and metadata only
        r.captions = {"alt": r.captions["alt"]}
        r.provenance = {}
    with rio.open_writer(str(path), fmt, shard_size=shard_size) as w:
        for r in recs:
            w.write(r)
    return recs


def _cfg(tmp_path, **kw):
    base = dict(input=str(tmp_path / "in"), output=str(tmp_path / "out"), progress=False, batch_size=4)
    base.update(kw)
    return RunConfig(**base)


def test_keeps_every_field_and_adds_captions_with_provenance(tmp_path):
    recs = _input(tmp_path / "in", error_every=13)
    s = run(_cfg(tmp_path), FakeCaptioner())
    out = list(rio.read_records(str(tmp_path / "out")))
    assert [r.key for r in out] == [r.key for r in recs]
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        [f"0000{i}{ext}" for i in range(4) for ext in (".tar", ".parquet", "_stats.json")] + [".recaption"])
    for got, want in zip(out, recs, strict=True):
        assert got.image == want.image and got.meta == want.meta and got.image_ext == want.image_ext
        assert got.captions["alt"] == want.captions["alt"]
        if want.image is None:  # an error record from the input passes through untouched
            assert got.error == want.error and set(got.captions) == {"alt"}
            continue
        im = want.pil()
        assert got.captions["short"] == caption_of(im, "short")
        assert got.captions["descriptive"] == caption_of(im, "descriptive")
        assert got.provenance["short"].captioner == "fake" and got.provenance["short"].mode == "short"
        assert got.provenance["descriptive"].prompt == "descriptive prompt"
    assert s.records == 40 and s.captioned == {"short": 37, "descriptive": 37} and s.parts_written == 4
    st = json.loads((tmp_path / "out" / "00000_stats.json").read_text())
    assert st["input_records"] == 10 and st["captioned"]["short"] == 10 and st["count"] == 10
    summary = json.loads((tmp_path / "out" / ".recaption" / "summary.json").read_text())
    assert summary["records"] == 40 and summary["errors"] == 3


@pytest.mark.parametrize("ifmt,ofmt", [("folder", "wds"), ("wds", "parquet"), ("parquet", "folder")])
def test_any_format_in_any_out(tmp_path, ifmt, ofmt):
    recs = _input(tmp_path / "in", n=12, fmt=ifmt, shard_size=5)
    run(_cfg(tmp_path, output_format=ofmt, modes=("short",)), FakeCaptioner())
    assert rio.detect_format(str(tmp_path / "out")) == ofmt
    out = {r.key: r for r in rio.read_records(str(tmp_path / "out"))}
    assert sorted(out) == [r.key for r in recs]
    for r in recs:
        assert out[r.key].captions == {"alt": r.captions["alt"], "short": caption_of(r.pil(), "short")}


def test_resume_after_crash_is_exactly_once(tmp_path):
    _input(tmp_path / "in", n=60, shard_size=10)
    run(_cfg(tmp_path, output=str(tmp_path / "ref")), FakeCaptioner())
    ref = {r.key: r.captions for r in rio.read_records(str(tmp_path / "ref"))}
    with pytest.raises(SystemExit):
        run(_cfg(tmp_path), FakeCaptioner(crash_after=7))  # dies inside the 2nd shard
    done = [n for n in os.listdir(tmp_path / "out") if n.endswith("_stats.json")]
    assert 1 <= len(done) < 6
    fake = FakeCaptioner()
    s = run(_cfg(tmp_path), fake)
    assert s.parts_skipped == len(done) and s.parts_written == 6 - len(done)
    assert s.written_this_run == 60 - 10 * len(done)
    keys = [r.key for r in rio.read_records(str(tmp_path / "out"))]
    assert len(keys) == len(set(keys)) == 60
    assert {r.key: r.captions for r in rio.read_records(str(tmp_path / "out"))} == ref
    assert not [n for n in os.listdir(tmp_path / "out") if ".tmp-" in n]
    # a third run has nothing left to do and does not call the captioner
    fake = FakeCaptioner()
    s = run(_cfg(tmp_path), fake)
    assert fake.calls == 0 and s.parts_skipped == 6 and s.records == 60
    # --overwrite redoes everything
    s = run(_cfg(tmp_path, overwrite=True, skip_existing=False), FakeCaptioner())
    assert s.parts_written == 6


KILL_SCRIPT = textwrap.dedent("""
    import hashlib, sys, time
    from recaption.pipeline import RunConfig, run
    from recaption.records import Provenance

    class Slow:
        name, version = "fake", "v0"
        def caption(self, images, mode):
            time.sleep(0.02)
            return [f"{mode} {hashlib.md5(im.tobytes()).hexdigest()[:10]}" for im in images]
        def provenance(self, mode):
            return Provenance.now(self.name, self.version, mode)

    run(RunConfig(input=sys.argv[1], output=sys.argv[2], progress=False, batch_size=8, part_size=int(sys.argv[3]),
                  output_format=sys.argv[4]), Slow())
    print("FINISHED")
""")


@pytest.mark.slow
@pytest.mark.parametrize("ofmt", ["wds", "folder"])
def test_kill_9_at_random_moments_then_resume(tmp_path, ofmt):
    import random

    _input(tmp_path / "in", n=480, shard_size=60)
    script = tmp_path / "job.py"
    script.write_text(KILL_SCRIPT)
    out = str(tmp_path / "out")
    cmd = [sys.executable, str(script), str(tmp_path / "in"), out, "20", ofmt]
    rng = random.Random(0)
    marker_dir = tmp_path / "out" / (".recaption" if ofmt == "folder" else "")

    def markers():
        return len([n for n in os.listdir(marker_dir) if n.endswith("_stats.json")]) if marker_dir.exists() else 0

    kills = 0
    for target in (2, 7, 12, 17):  # 24 parts in all: kill once this many are done, at a random moment after
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while markers() < target and p.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        p.communicate()
    assert kills >= 3
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert "FINISHED" in p.stdout, p.stderr
    subprocess.run([*cmd[:3], str(tmp_path / "ref"), "20", ofmt], check=True, capture_output=True, timeout=120)
    got = list(rio.read_records(out))
    keys = [r.key for r in got]
    assert len(keys) == len(set(keys)) == 480
    ref = {r.key: r.captions for r in rio.read_records(str(tmp_path / "ref"))}
    assert {r.key: r.captions for r in got} == ref


def test_odd_and_bad_images(tmp_path):
    make_odd_folder(str(tmp_path / "in"), n_good=20)
    s = run(_cfg(tmp_path, output_format="wds", batch_size=8), FakeCaptioner())
    out = {r.key: r for r in rio.read_records(str(tmp_path / "out"))}
    assert len(out) == 30 and s.records == 30
    for k in VALID_ODD + tuple(f"good_{i:04d}" for i in range(20)):
        assert out[k].error is None and set(out[k].captions) == {"alt", "short", "descriptive"}, k
    for k in ERROR_ODD + EITHER_ODD:  # with PIL's defaults the truncated and oversized ones are errors
        assert out[k].error and "short" not in out[k].captions, k
        assert out[k].captions["alt"].startswith("alt text of")  # the record is kept whole
    assert out["odd_zero"].error.startswith("empty")
    assert out["odd_text"].error.startswith("not-an-image")
    assert out["odd_truncated"].error.startswith("corrupt")
    assert out["odd_bomb"].error.startswith("too-large")
    assert out["odd_exif"].captions["short"].startswith("short 20x40")  # rotation applied
    assert out["odd_zero"].image == b""  # bytes kept as they were
    assert s.error_kinds == {"empty": 1, "not-an-image": 1, "corrupt": 1, "too-large": 1}


def test_decode_converts_odd_images_to_rgb():
    o = odd_images()
    assert decode_image(o["odd_cmyk.jpg"]).getpixel((5, 5)) == (255, 0, 0)
    sixteen = decode_image(o["odd_16bit.png"])
    assert sixteen.mode == "RGB" and 0 < sixteen.getpixel((16, 16))[0] < 255  # scaled, not clipped to white
    assert decode_image(o["odd_palette.png"]).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert decode_image(o["odd_palette.png"]).getpixel((8, 8)) == (0, 0, 255)
    assert decode_image(o["odd_exif.jpg"]).size == (20, 40)
    assert decode_image(o["odd_animated.gif"]).getpixel((0, 0)) == (255, 0, 0)  # first frame
    assert decode_image(o["odd_gray.png"]).getpixel((0, 0)) == (128, 128, 128)
    with pytest.raises(DecodeError, match="too-large"):
        decode_image(o["odd_gray.png"], max_pixels=100)
    big = Image.new("RGB", (300, 200))
    assert max(decode_image(rio_bytes(big, "JPEG"), max_side=64).size) == 64


def rio_bytes(img, fmt):
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_failing_batch_retries_per_record(tmp_path):
    recs = _input(tmp_path / "in", n=20, shard_size=20)
    fake = FakeCaptioner(fail_batches=True)
    s = run(_cfg(tmp_path, modes=("short",)), fake)
    assert s.errors == 0 and s.captioned == {"short": 20}
    assert fake.batch_sizes.count(1) == 20  # every image retried alone
    # one poisoned image: only it loses its caption, the rest of its batch and shard are captioned
    bad = Image.new("RGB", (8, 8), POISON)
    recs[5].image, recs[5].image_ext = rio_bytes(bad, "PNG"), "png"
    with rio.open_writer(str(tmp_path / "in2"), "wds", shard_size=20) as w:
        for r in recs:
            w.write(r)
    s = run(_cfg(tmp_path, input=str(tmp_path / "in2"), output=str(tmp_path / "out2"), modes=("short",)),
            FakeCaptioner(poison=True))
    out = list(rio.read_records(str(tmp_path / "out2")))
    assert s.error_kinds == {"captioner": 1} and s.captioned == {"short": 19}
    assert out[5].error.startswith("captioner: short: RuntimeError: poisoned image")
    assert all("short" in r.captions for i, r in enumerate(out) if i != 5)


def test_skip_existing_and_max_images(tmp_path):
    recs = _input(tmp_path / "in", n=30, shard_size=10)
    run(_cfg(tmp_path, modes=("short",)), FakeCaptioner())
    # the output, recaptioned into a second mode: existing short captions are kept, not recomputed
    fake = FakeCaptioner()
    s = run(_cfg(tmp_path, input=str(tmp_path / "out"), output=str(tmp_path / "out2")), fake)
    assert s.skipped_existing == {"short": 30} and s.captioned == {"descriptive": 30}
    assert fake.calls == 8  # 30 images in batches of 4, descriptive only
    s = run(_cfg(tmp_path, input=str(tmp_path / "out"), output=str(tmp_path / "out3"), skip_existing=False,
                 max_images=15, modes=("short",)), FakeCaptioner())
    assert s.captioned == {"short": 15} and s.records == 15
    assert len(list(rio.read_records(str(tmp_path / "out3")))) == 15
    # several workers asked: a capped trial runs in one process and stops at the same record
    s = run(_cfg(tmp_path, input=str(tmp_path / "out"), output=str(tmp_path / "out4"), skip_existing=False,
                 max_images=15, modes=("short",), workers=2), FakeCaptioner())
    assert s.records == 15
    assert [r.key for r in rio.read_records(str(tmp_path / "out4"))] == [r.key for r in recs[:15]]
    # the part cut short by max_images is redone by a later full run; nothing is duplicated
    s = run(_cfg(tmp_path, input=str(tmp_path / "out"), output=str(tmp_path / "out3"), skip_existing=False,
                 modes=("short",)), FakeCaptioner())
    assert s.parts_skipped == 1 and s.written_this_run == 20
    assert sorted(r.key for r in rio.read_records(str(tmp_path / "out3"))) == [r.key for r in recs]


def test_folder_input_is_split_into_parts(tmp_path):
    _input(tmp_path / "in", n=25, fmt="folder")
    s = run(_cfg(tmp_path, part_size=10, output_format="parquet"), FakeCaptioner())
    assert s.parts_written == 3
    assert sorted(os.listdir(tmp_path / "out"))[1:4] == ["in_00000.parquet", "in_00000_stats.json",
                                                        "in_00001.parquet"]


def test_unreadable_input_shard_fails_alone(tmp_path):
    recs = _input(tmp_path / "in", n=30, shard_size=10)
    data = (tmp_path / "in" / "00001.tar").read_bytes()
    (tmp_path / "in" / "00001.tar").write_bytes(data[: len(data) // 2])
    s = run(_cfg(tmp_path), FakeCaptioner())
    assert list(s.failed_shards) == [str(tmp_path / "in" / "00001.tar")]
    assert "truncated tar shard" in s.failed_shards[str(tmp_path / "in" / "00001.tar")]
    assert s.parts_written == 2 and not (tmp_path / "out" / "00001.tar").exists()
    assert [r.key for r in rio.read_records(str(tmp_path / "out"))] == [r.key for r in recs[:10] + recs[20:]]


def test_img2dataset_shards_keep_caption_and_columns(tmp_path):
    (tmp_path / "in").mkdir()
    with tarfile.open(tmp_path / "in" / "00000.tar", "w") as tar:
        for i in range(6):
            key = f"{i:09d}"
            meta = {"url": f"http://127.0.0.1/{i}.jpg", "caption": f"cap {i}", "key": key, "status": "success",
                    "error_message": None, "width": 16, "height": 16, "sha256": "0" * 64, "extra_col": i}
            for ext, data in (("jpg", rio_bytes(Image.new("RGB", (16, 16), (i, 0, 0)), "JPEG")),
                              ("txt", f"cap {i}".encode()), ("json", json.dumps(meta, indent=4).encode())):
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
    s = run(_cfg(tmp_path), FakeCaptioner())
    assert s.captioned == {"short": 6, "descriptive": 6}
    for i, r in enumerate(rio.read_records(str(tmp_path / "out"))):
        assert r.captions["alt"] == f"cap {i}" and r.meta["extra_col"] == i and r.meta["url"].endswith(f"{i}.jpg")
        assert r.meta["caption"] == f"cap {i}" and "short" in r.captions


def test_config_errors(tmp_path):
    _input(tmp_path / "in", n=4)
    with pytest.raises(RecordError, match="caption mode"):
        _cfg(tmp_path, modes=("long",))
    with pytest.raises(RecordError, match="same folder"):
        run(_cfg(tmp_path, output=str(tmp_path / "in")), FakeCaptioner())
    run(_cfg(tmp_path, modes=("short",)), FakeCaptioner())
    with pytest.raises(RecordError, match="different job"):
        run(_cfg(tmp_path, output_format="parquet"), FakeCaptioner())
    with pytest.raises(FileNotFoundError):
        run(_cfg(tmp_path, input=str(tmp_path / "nope")), FakeCaptioner())


def test_cli_run(tmp_path, monkeypatch, capsys):
    import recaption.pipeline as pipeline
    from recaption.cli import main

    make_odd_folder(str(tmp_path / "in"), n_good=10)
    monkeypatch.setattr(pipeline, "load_captioner_for", lambda cfg: FakeCaptioner())
    argv = ["run", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--captioner", "fake",
            "--modes", "short", "--output-format", "parquet", "--batch-size", "4", "--no-progress"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    line = capsys.readouterr().out
    assert "20 records" in line and "captioned: short 16" in line and "errors: 4" in line
    with pytest.raises(SystemExit) as e:
        main([*argv, "--fail-on-error"])
    assert e.value.code == 1
    with pytest.raises(SystemExit) as e:
        main(["run", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), "--captioner", "x"])
    assert e.value.code == 2 and "nope" in capsys.readouterr().err


def test_several_worker_processes_write_the_same_output(tmp_path):
    from recaption.pipeline.fake import HashCaptioner

    _input(tmp_path / "in", n=40, shard_size=10, error_every=9)
    one = run(_cfg(tmp_path, output=str(tmp_path / "one")), HashCaptioner())
    two = run(_cfg(tmp_path, output=str(tmp_path / "two"), workers=2), HashCaptioner())

    def view(p):
        return [(r.key, r.image, r.captions, r.meta, r.error) for r in rio.read_records(str(p))]

    assert view(tmp_path / "two") == view(tmp_path / "one")
    assert two.records == one.records == 40 and two.captioned == one.captioned and two.parts_written == 4
    again = run(_cfg(tmp_path, output=str(tmp_path / "two"), workers=2), HashCaptioner())
    assert again.parts_skipped == 4 and again.written_this_run == 0


def test_fsspec_urls_in_and_out():
    from recaption.pipeline.fake import HashCaptioner, caption_of

    recs = _input("memory://pipe-test/in", n=12, shard_size=5)
    cfg = RunConfig(input="memory://pipe-test/in/{00000..00002}.tar", output="memory://pipe-test/out",
                    output_format="parquet", progress=False, batch_size=4)
    s = run(cfg, HashCaptioner())
    assert s.parts_written == 3
    out = list(rio.read_records("memory://pipe-test/out"))
    assert [r.captions["short"] for r in out] == [caption_of(r.pil(), "short") for r in recs]
    assert run(cfg, HashCaptioner()).parts_skipped == 3


def test_parquet_row_with_a_lost_image_file_is_an_error_record(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    good = [r for r in synthetic_records(3, seed=5)]
    for r in good:
        (tmp_path / "in" / f"{r.key}.{r.image_ext}").write_bytes(r.image)
    keys = [r.key for r in good] + ["lost"]
    paths = [f"{r.key}.{r.image_ext}" for r in good] + ["lost.png"]
    pq.write_table(pa.table({"key": keys, "image_path": paths, "caption": [f"alt {k}" for k in keys]}),
                   tmp_path / "in" / "rows.parquet")
    s = run(_cfg(tmp_path, input=str(tmp_path / "in" / "rows.parquet"), output_format="parquet"),
            FakeCaptioner())
    out = {r.key: r for r in rio.read_records(str(tmp_path / "out"))}
    assert sorted(out) == sorted(keys) and s.records == 4 and not s.failed_shards
    assert "image file 'lost.png' not found" in out["lost"].error and "short" not in out["lost"].captions
    assert out["lost"].captions["alt"] == "alt lost"
    for r in good:
        assert out[r.key].error is None and out[r.key].captions["short"].startswith("short ")


class ShortOnlyCaptioner(FakeCaptioner):
    """Like a checkpoint fine-tuned for short captions: says up front that it cannot write descriptive ones."""

    def check_mode(self, mode):
        from recaption.captioners.base import CaptionerError

        if mode != "short":
            raise CaptionerError(f"fine-tuned for 'short' captions, not {mode!r}")


def test_a_mode_the_captioner_cannot_write_is_refused_before_reading(tmp_path):
    _input(tmp_path / "in", n=8)
    cap = ShortOnlyCaptioner()
    with pytest.raises(RecordError, match="cannot write 'descriptive' captions: fine-tuned for 'short'"):
        run(_cfg(tmp_path, modes=("short", "descriptive")), cap)
    assert cap.calls == 0
    assert not (tmp_path / "out").exists() or not any(p.suffix == ".tar" for p in (tmp_path / "out").iterdir())
    summary = run(_cfg(tmp_path, modes=("short",)), cap)  # the mode it can write runs as usual
    assert summary.records == 8 and summary.errors == 0 and summary.captioned["short"] == 8


def test_mode_router_checks_modes_through_its_checkpoints():
    from recaption.captioners.base import CaptionerError
    from recaption.captioners.clip_prefix import ModeRouter

    router = ModeRouter({"short": ShortOnlyCaptioner()})
    router.check_mode("short")
    with pytest.raises(CaptionerError, match="no 'descriptive' checkpoint here"):
        router.check_mode("descriptive")
    with pytest.raises(RecordError, match="cannot write 'descriptive'"):
        from recaption.pipeline.core import check_modes

        check_modes(router, ("short", "descriptive"))
