"""The sample record: validation, JSON form, decoding errors that name the record."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from recaption.records import Provenance, Record, RecordError, encode_png, normalize_ext, sniff_ext


def _png(color=(255, 0, 0), size=(8, 8)) -> bytes:
    return encode_png(Image.new("RGB", size, color))


def test_json_round_trip_keeps_every_field():
    prov = Provenance.now("clip-prefix", version="ckpt-3", mode="descriptive", prompt=None, beam=3)
    r = Record("k1", _png(), "png", {"alt": "a dog", "descriptive": "a red dog on grass", "mine": "x"},
               {"descriptive": prov}, {"url": "http://x", "nested": {"a": [1, 2]}})
    d = r.to_json_dict()
    r2 = Record.from_json_dict(d, image=r.image, image_ext="png")
    assert r2 == r
    assert r2.provenance["descriptive"].extra == {"beam": 3}
    assert r2.provenance["descriptive"].created.endswith("+00:00")


def test_unknown_top_level_fields_are_kept_in_meta():
    # img2dataset writes url, status, width... at the top level of key.json
    r = Record.from_json_dict({"key": "0001", "url": "http://a", "status": "success", "width": 64})
    assert r.meta == {"url": "http://a", "status": "success", "width": 64}


@pytest.mark.parametrize("bad", ["", "a/b", "..x", ".hidden"])
def test_bad_keys_are_rejected_with_the_key_named(bad):
    with pytest.raises(RecordError, match="key"):
        Record(bad)


def test_bad_captions_and_provenance_are_named():
    with pytest.raises(RecordError, match="captions"):
        Record.from_json_dict({"key": "a", "captions": {"alt": 3}}, source="x.json")
    with pytest.raises(RecordError, match="provenance"):
        Record.from_json_dict({"key": "a", "provenance": {"short": "nope"}})
    with pytest.raises(RecordError, match="no key"):
        Record.from_json_dict({"captions": {}}, source="y.json")


def test_pil_decodes_and_applies_exif_rotation():
    img = Image.new("RGB", (10, 4), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    r = Record("rot", buf.getvalue(), "jpg")
    assert r.pil().size == (4, 10)


def test_pil_names_the_record_on_bad_bytes():
    with pytest.raises(RecordError, match="'broken'.*cannot be decoded"):
        Record("broken", b"not an image", "png").pil()
    with pytest.raises(RecordError, match="'none' has no image"):
        Record("none").pil()


def test_ext_helpers():
    assert normalize_ext(".JPEG") == "jpg"
    assert sniff_ext(_png()) == "png"
    assert sniff_ext(b"\xff\xd8\xff\xe0") == "jpg"
    assert sniff_ext(b"hello") == "bin"
