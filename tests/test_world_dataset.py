"""World datasets: records, truth kept apart, determinism, writing through recaption.io."""

from __future__ import annotations

import pytest

from recaption.records import Record
from recaption.world import HELD_OUT_COMBOS, record_scene, truth_caption
from recaption.world.dataset import WorldConfig, generate_records, write_dataset
from recaption.world.oracle import parse


def test_records_keep_truth_out_of_captions():
    recs = list(generate_records(20, seed=41))
    for r in recs:
        assert set(r.captions) == {"alt"} and r.image_ext == "png" and r.image.startswith(b"\x89PNG")
        w = r.meta["world"]
        assert set(w["truth"]) == {"short", "descriptive"}
        assert truth_caption(r, "short") == w["truth"]["short"]
        assert truth_caption(r.to_json_dict(), "descriptive") == w["truth"]["descriptive"]
        assert parse(r.pil()).same_as(record_scene(r))
    with pytest.raises(KeyError):
        truth_caption(Record(key="x"), "short")
    with pytest.raises(ValueError):
        truth_caption(recs[0], "alt")


def test_generation_is_deterministic_and_splittable():
    a = list(generate_records(30, seed=42))
    b = list(generate_records(10, seed=42, start=20))
    assert [r.image for r in a[20:]] == [r.image for r in b]
    assert [r.to_json_dict() for r in a[20:]] == [r.to_json_dict() for r in b]
    c = list(generate_records(30, seed=43))
    assert [r.image for r in a] != [r.image for r in c]
    big = next(generate_records(1, seed=42, size=128))
    assert big.pil().size == (128, 128)


def test_training_data_never_contains_held_out_combos():
    for r in generate_records(2000, seed=44):
        assert not any((o.color, o.shape) in HELD_OUT_COMBOS for o in record_scene(r).objects)


@pytest.mark.parametrize("fmt", ["wds", "parquet", "folder"])
def test_write_dataset_round_trips_through_io(tmp_path, fmt):
    from recaption.io import read_records

    out = str(tmp_path / fmt)
    s = write_dataset(out, 45, WorldConfig(seed=45), format=fmt, shard_size=20, workers=2, progress=False)
    assert s["written"] == 45 and s["shards"] == 3
    back = sorted(read_records(out), key=lambda r: r.key)
    ref = list(generate_records(45, seed=45))
    assert [r.key for r in back] == [r.key for r in ref]
    assert all(x.image == y.image and x.captions == y.captions and x.meta == y.meta for x, y in zip(back, ref, strict=True))
    again = write_dataset(out, 45, WorldConfig(seed=45), format=fmt, shard_size=20, workers=1, progress=False)
    assert again["skipped"] == 45 and again["written"] == 0  # resumed: finished shards are skipped


def test_resume_refuses_a_different_config(tmp_path):
    from recaption.world.dataset import CONFIG_NAME
    from recaption.world.jobs import WorldJobError

    out = str(tmp_path / "ds")
    write_dataset(out, 10, WorldConfig(seed=46), format="wds", shard_size=5, workers=1, progress=False)
    assert WorldConfig.from_dict(__import__("json").loads((tmp_path / "ds" / CONFIG_NAME).read_text())) == \
        WorldConfig(seed=46)
    with pytest.raises(WorldJobError, match="another config"):
        write_dataset(out, 10, WorldConfig(seed=47), format="wds", shard_size=5, workers=1, progress=False)


def test_resume_redoes_a_shard_that_grew(tmp_path):
    from recaption.io import read_records

    out = str(tmp_path / "ds")
    assert write_dataset(out, 15, WorldConfig(seed=48), format="wds", shard_size=10, workers=1,
                         progress=False)["written"] == 15
    s = write_dataset(out, 20, WorldConfig(seed=48), format="wds", shard_size=10, workers=1, progress=False)
    assert s["skipped"] == 10 and s["written"] == 10
    assert sorted(r.key for r in read_records(out)) == [f"{i:08d}" for i in range(20)]
