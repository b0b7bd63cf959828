"""Formats: lossless round trips between every pair, img2dataset's shards, plain parquet, errors that name
the bad input, atomic shard writes, streaming, and the convert / info commands."""

from __future__ import annotations

import io
import json
import os
import tarfile
from itertools import permutations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from recaption import io as rio
from recaption.io.synthetic import synthetic_records
from recaption.records import Record, RecordError, encode_png

PAIRS = list(permutations(rio.FORMATS, 2))


def _write(records, path, fmt, shard_size=7):
    with rio.open_writer(str(path), fmt, shard_size=shard_size) as w:
        for r in records:
            w.write(r)
    return w


def _jpg(color=(10, 200, 30), size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def records():
    return list(synthetic_records(23, seed=1, error_every=10))


@pytest.mark.parametrize("src_fmt,dst_fmt", PAIRS)
def test_round_trip_every_pair_is_lossless(tmp_path, records, src_fmt, dst_fmt):
    _write(records, tmp_path / "a", src_fmt)
    summary = rio.convert(str(tmp_path / "a"), str(tmp_path / "b"), dst_fmt, shard_size=5)
    assert summary["records"] == len(records) and summary["shards"] == 5
    assert summary["errors"] == sum(r.error is not None for r in records) == 2
    assert rio.detect_format(str(tmp_path / "b")) == dst_fmt
    back = list(rio.read_records(str(tmp_path / "b")))
    assert [r.key for r in back] == [r.key for r in records]
    for got, want in zip(back, records, strict=True):
        assert got.image == want.image  # byte-identical, never re-encoded
        assert got == want  # captions, provenance, meta, error, image_ext


def test_chain_folder_wds_parquet_folder_500_records(tmp_path):
    recs = list(synthetic_records(500, seed=7, size=24, error_every=97))
    _write(recs, tmp_path / "folder", "folder", shard_size=1000)
    rio.convert(str(tmp_path / "folder"), str(tmp_path / "wds"), "wds", shard_size=128)
    rio.convert(str(tmp_path / "wds"), str(tmp_path / "pq"), "parquet", shard_size=200)
    rio.convert(str(tmp_path / "pq"), str(tmp_path / "folder2"), "folder")
    assert len(rio.list_shards(str(tmp_path / "wds"))) == 4
    back = list(rio.read_records(str(tmp_path / "folder2")))
    assert back == recs
    # the files themselves are identical too
    for name in sorted(os.listdir(tmp_path / "folder")):
        if not name.startswith("."):
            assert (tmp_path / "folder" / name).read_bytes() == (tmp_path / "folder2" / name).read_bytes(), name


def test_fsspec_memory_urls_and_patterns(records):
    base = "memory://rio-test"
    _write(records, f"{base}/wds", "wds", shard_size=5)
    shards = rio.list_shards(f"{base}/wds")
    assert len(shards) == 5 and all(s.startswith("memory://") for s in shards)
    assert rio.detect_format(f"{base}/wds/{{00000..00001}}.tar") == "wds"
    brace = list(rio.read_records(f"{base}/wds/{{00000..00001}}.tar"))
    assert brace == records[:10]
    glob = list(rio.read_records(f"{base}/wds/0000[34].tar"))
    assert glob == records[15:]
    rio.convert(f"{base}/wds", f"{base}/pq", "parquet")
    assert list(rio.read_records(f"{base}/pq")) == records


def test_file_url(tmp_path, records):
    _write(records[:4], tmp_path / "f", "folder")
    assert list(rio.read_records(f"file://{tmp_path}/f")) == records[:4]


def _img2dataset_shard(path, n=4, extra_member=True):
    """A tar exactly as img2dataset's WebDatasetSampleWriter writes it, with its parquet and stats."""
    metas = []
    with tarfile.open(path / "00000.tar", "w") as tar:
        for i in range(n):
            key = f"{i:09d}"
            meta = {"url": f"http://127.0.0.1:8000/img{i}.jpg", "caption": f"photo number {i}", "key": key,
                    "status": "success", "error_message": None, "width": 12, "height": 10,
                    "original_width": 48, "original_height": 40, "exif": "{}",
                    "sha256": "ab" * 32, "license": "cc-by"}
            members = {"jpg": _jpg((i * 30, 0, 0)), "txt": meta["caption"].encode(),
                       "json": json.dumps(meta, indent=4).encode()}
            if extra_member and i == 0:
                members["cls"] = b"3"
            for ext, data in members.items():
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
            metas.append(meta)
    pq.write_table(pa.Table.from_pylist(metas), path / "00000.parquet")
    (path / "00000_stats.json").write_text(json.dumps({"count": n, "successes": n, "failed_to_download": 0,
                                                       "failed_to_resize": 0, "duration": 1.0,
                                                       "status_dict": {"success": n}}, indent=4))
    return metas


def test_reads_img2dataset_shards_and_keeps_every_field(tmp_path):
    (tmp_path / "i2d").mkdir()
    metas = _img2dataset_shard(tmp_path / "i2d")
    assert rio.detect_format(str(tmp_path / "i2d")) == "wds"
    recs = list(rio.read_records(str(tmp_path / "i2d")))
    assert [r.key for r in recs] == [m["key"] for m in metas]
    for r, m in zip(recs, metas, strict=True):
        assert r.captions == {"alt": m["caption"]}
        assert r.provenance == {} and r.error is None
        assert r.image_ext == "jpg" and r.pil().size == (12, 10)
        for k, v in m.items():
            if k != "key":
                assert r.meta[k] == v, k
    assert recs[0].meta["wds_extra"] == {"cls": "3"}
    # ... and survive a trip through the other formats
    rio.convert(str(tmp_path / "i2d"), str(tmp_path / "pq"), "parquet")
    rio.convert(str(tmp_path / "pq"), str(tmp_path / "f"), "folder")
    assert list(rio.read_records(str(tmp_path / "f"))) == recs


def test_wds_writer_writes_img2dataset_layout(tmp_path, records):
    _write(records[:9], tmp_path / "w", "wds", shard_size=5)
    assert sorted(os.listdir(tmp_path / "w")) == ["00000.parquet", "00000.tar", "00000_stats.json",
                                                  "00001.parquet", "00001.tar", "00001_stats.json"]
    with tarfile.open(tmp_path / "w" / "00000.tar") as tar:
        names = tar.getnames()
    r0 = records[0]
    assert names[:3] == [f"{r0.key}.jpg", f"{r0.key}.txt", f"{r0.key}.json"]
    index = pq.read_table(tmp_path / "w" / "00000.parquet").to_pylist()
    assert [row["key"] for row in index] == [r.key for r in records[:5]]
    assert index[0]["caption"] == r0.captions["alt"] and index[0]["url"] == r0.meta["url"]
    stats = json.loads((tmp_path / "w" / "00001_stats.json").read_text())
    assert stats["count"] == 4 and stats["captions"]["alt"] == 4


def test_plain_user_parquet(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(_jpg())
    png = encode_png(Image.new("RGB", (5, 5), (1, 2, 3)))
    pq.write_table(pa.table({"image_path": ["imgs/a.jpg", None], "image": [None, png],
                             "text": ["a photo", "an icon"], "caption_short": ["photo", None],
                             "aesthetic": [5.5, 6.0]}), tmp_path / "plain.parquet")
    recs = list(rio.read_records(str(tmp_path / "plain.parquet")))
    assert [r.key for r in recs] == ["plain_000000000", "plain_000000001"]
    assert recs[0].image == _jpg() and recs[0].image_ext == "jpg"
    assert recs[0].captions == {"alt": "a photo", "short": "photo"}
    assert recs[1].image == png and recs[1].image_ext == "png" and recs[1].captions == {"alt": "an icon"}
    assert recs[0].meta == {"aesthetic": 5.5}
    # Hugging Face datasets' Image struct column, and a captions struct column
    pq.write_table(pa.table({"key": ["x1"], "image": [{"bytes": png, "path": None}],
                             "captions": [{"alt": "hi", "descriptive": "a tiny grey square"}]}),
                   tmp_path / "hf.parquet")
    (r,) = rio.read_records(str(tmp_path / "hf.parquet"))
    assert r.key == "x1" and r.image == png and r.captions == {"alt": "hi", "descriptive": "a tiny grey square"}


def test_parquet_reads_row_groups_lazily(tmp_path, records):
    _write(records, tmp_path / "p", "parquet", shard_size=100)
    pf = pq.ParquetFile(tmp_path / "p" / "00000.parquet")
    assert pf.schema_arrow.names == ["key", "image", "image_ext", "caption", "json"]
    # streaming: the first record comes out before a corrupt second shard is touched
    (tmp_path / "p" / "00001.parquet").write_bytes(b"PAR1 garbage")
    it = rio.read_records(str(tmp_path / "p"))
    assert next(it) == records[0]
    with pytest.raises(RecordError, match="00001.parquet: unreadable parquet"):
        list(it)


# -- errors name the bad input -------------------------------------------------------------------------


def test_bad_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        list(rio.read_records(str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="missing.tar"):
        list(rio.read_records(str(tmp_path / "missing.tar")))
    with pytest.raises(FileNotFoundError, match="no files match"):
        rio.detect_format(str(tmp_path / "*.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordError, match="no images, tar shards or parquet"):
        list(rio.read_records(str(tmp_path / "empty")))


def test_corrupt_and_truncated_tar(tmp_path, records):
    (tmp_path / "bad.tar").write_bytes(os.urandom(3000))
    with pytest.raises(RecordError, match=r"bad.tar: unreadable tar shard"):
        list(rio.read_records(str(tmp_path / "bad.tar")))
    _write(records, tmp_path / "w", "wds", shard_size=100)
    data = (tmp_path / "w" / "00000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(RecordError, match=r"cut.tar: unreadable tar shard \(corrupt or truncated after key"):
        list(rio.read_records(str(tmp_path / "cut.tar")))


def test_tar_cut_at_a_member_boundary_is_an_error(tmp_path, records):
    _write(records, tmp_path / "w", "wds", shard_size=100)
    data = (tmp_path / "w" / "00000.tar").read_bytes()
    with tarfile.open(tmp_path / "w" / "00000.tar") as tar:
        cut = tar.getmembers()[9].offset  # a header boundary: tarfile alone would see a shorter archive
    (tmp_path / "cut.tar").write_bytes(data[:cut])
    with pytest.raises(RecordError, match=r"cut.tar: truncated tar shard \(no end-of-archive marker"):
        list(rio.read_records(str(tmp_path / "cut.tar")))


def test_record_missing_its_image(tmp_path):
    with tarfile.open(tmp_path / "noimg.tar", "w") as tar:
        for name, data in [("k1.txt", b"hello"), ("k1.json", b"{}")]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    with pytest.raises(RecordError, match=r"noimg.tar: k1: record has no image member"):
        list(rio.read_records(str(tmp_path / "noimg.tar")))
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "lonely.txt").write_text("a caption")
    with pytest.raises(RecordError, match=r"lonely.txt: record 'lonely' has no image file"):
        list(rio.read_records(str(tmp_path / "f"), "folder"))
    pq.write_table(pa.table({"key": ["z"], "image_path": ["gone.png"]}), tmp_path / "t.parquet")
    # a parquet row whose image file is gone is that record's error (a batch job records it and goes on)
    (rec,) = rio.read_records(str(tmp_path / "t.parquet"))
    assert rec.key == "z" and rec.image is None
    assert rec.error.endswith("t.parquet: row 0 (key 'z'): image file 'gone.png' not found")
    pq.write_table(pa.table({"key": ["z"], "caption": ["c"]}), tmp_path / "u.parquet")
    with pytest.raises(RecordError, match=r"u.parquet: no image column"):
        list(rio.read_records(str(tmp_path / "u.parquet")))


def test_invalid_json_sidecar_and_member(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "a.png").write_bytes(encode_png(Image.new("RGB", (4, 4))))
    (tmp_path / "f" / "a.json").write_text("{not json")
    with pytest.raises(RecordError, match=r"a.json: invalid JSON"):
        list(rio.read_records(str(tmp_path / "f")))
    (tmp_path / "f" / "a.json").write_text('{"captions": {"alt": 3}}')
    with pytest.raises(RecordError, match=r"'captions' in .*a.json must map names to strings"):
        list(rio.read_records(str(tmp_path / "f")))
    with tarfile.open(tmp_path / "j.tar", "w") as tar:
        for name, data in [("k.png", encode_png(Image.new("RGB", (4, 4)))), ("k.json", b"[1,")]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    with pytest.raises(RecordError, match=r"j.tar: k.json: invalid JSON"):
        list(rio.read_records(str(tmp_path / "j.tar")))


def test_folder_recurses_and_keys_must_be_unique(tmp_path):
    for sub, key in [("10_cat", "a"), ("10_cat", "b"), ("5_dog/deep", "c")]:
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        (tmp_path / sub / f"{key}.png").write_bytes(encode_png(Image.new("RGB", (4, 4))))
        (tmp_path / sub / f"{key}.txt").write_text(f"caption {key}")
    assert [r.key for r in rio.read_records(str(tmp_path))] == ["a", "b", "c"]
    assert [r.captions["alt"] for r in rio.read_records(str(tmp_path))] == ["caption a", "caption b", "caption c"]
    assert len(rio.list_shards(str(tmp_path))) == 2
    (tmp_path / "5_dog" / "a.png").write_bytes(encode_png(Image.new("RGB", (4, 4))))
    with pytest.raises(RecordError, match=r"key 'a' appears twice: in .*10_cat and in .*5_dog"):
        list(rio.read_records(str(tmp_path)))


def test_txt_field_chooses_the_sidecar_caption(tmp_path, records):
    _write(records[:3], tmp_path / "f", "folder")
    assert (tmp_path / "f" / f"{records[1].key}.txt").read_text() == records[1].captions["alt"]
    rio.convert(str(tmp_path / "f"), str(tmp_path / "g"), "folder", txt_field="short")
    assert (tmp_path / "g" / f"{records[1].key}.txt").read_text() == records[1].captions["short"]
    # a kohya/taggui folder: txt only, read into the chosen field
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "x.png").write_bytes(records[1].image)
    (tmp_path / "k" / "x.txt").write_text("1girl, solo")
    (r,) = rio.read_records(str(tmp_path / "k"), txt_field="tags")
    assert r.captions == {"tags": "1girl, solo"}


def test_aborted_shard_leaves_nothing(tmp_path, records):
    for fmt in rio.FORMATS:
        out = tmp_path / fmt
        with pytest.raises(RuntimeError), rio.open_writer(str(out), fmt, shard_size=4) as w:
            for i, r in enumerate(records[:6]):
                if i == 5:
                    raise RuntimeError("boom")
                w.write(r)
        assert rio.shard_done(str(out), "00000", fmt) and not rio.shard_done(str(out), "00001", fmt)
        assert len(list(rio.read_records(str(out)))) == 4
        leftovers = [p for p in out.rglob("*") if ".tmp-" in p.name]
        assert leftovers == []


def test_wds_key_with_dot_is_refused(tmp_path):
    with pytest.raises(RecordError, match="cannot contain '.'"), rio.open_writer(str(tmp_path), "wds") as w:
        w.write(Record("a.b", image=encode_png(Image.new("RGB", (2, 2)))))


def test_convert_refuses_non_empty_destination(tmp_path, records):
    _write(records[:2], tmp_path / "a", "wds")
    _write(records[:2], tmp_path / "b", "wds")
    with pytest.raises(FileExistsError):
        rio.convert(str(tmp_path / "a"), str(tmp_path / "b"), "parquet")
    rio.convert(str(tmp_path / "a"), str(tmp_path / "b"), "wds", overwrite=True)
    assert list(rio.read_records(str(tmp_path / "b"))) == records[:2]


# -- command line ----------------------------------------------------------------------------------------


def test_cli_convert_and_info(tmp_path, records, capsys):
    from recaption.cli import main

    _write(records, tmp_path / "a", "folder")
    with pytest.raises(SystemExit) as e:
        main(["convert", str(tmp_path / "a"), str(tmp_path / "b"), "--to", "wds", "--shard-size", "10"])
    assert e.value.code == 0
    assert "wrote 23 records (2 with errors) in 3 wds shards" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["info", str(tmp_path / "b"), "--json"])
    assert e.value.code == 0
    d = json.loads(capsys.readouterr().out)
    assert d["records"] == 23 and d["shards"] == 3 and d["errors"] == 2 and d["captions"]["short"] == 21
    for argv, msg in [(["convert", str(tmp_path / "nope"), str(tmp_path / "c"), "--to", "wds"], "nope"),
                      (["convert", str(tmp_path / "a"), str(tmp_path / "b"), "--to", "wds"], "--overwrite"),
                      (["convert", str(tmp_path / "a"), str(tmp_path / "d"), "--to", "zip"], "unknown format")]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and "Traceback" not in err
