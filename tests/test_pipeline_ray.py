"""The ray engine on a local Ray instance (CPU): same output as the local engine, same resume."""

from __future__ import annotations

import pytest

from recaption import io as rio
from recaption.pipeline import RunConfig, run
from recaption.pipeline.fake import HashCaptioner
from recaption.pipeline.oddimages import make_odd_folder

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _view(path):
    return [(r.key, r.image, r.captions, r.meta, r.error, {k: (p.captioner, p.version, p.mode)
                                                           for k, p in r.provenance.items()})
            for r in rio.read_records(path)]


@pytest.mark.slow
def test_ray_engine_matches_local_engine_and_resumes(tmp_path, local_ray):
    make_odd_folder(str(tmp_path / "odd"), n_good=30)
    rio.convert(str(tmp_path / "odd"), str(tmp_path / "in"), "wds", shard_size=8)
    kw = dict(input=str(tmp_path / "in"), progress=False, batch_size=4)
    local = run(RunConfig(output=str(tmp_path / "local"), **kw), HashCaptioner())
    remote = run(RunConfig(output=str(tmp_path / "ray"), engine="ray", workers=1, **kw), HashCaptioner())
    assert _view(str(tmp_path / "ray")) == _view(str(tmp_path / "local"))
    assert remote.records == local.records == 40 and remote.error_kinds == local.error_kinds
    assert remote.captioned == local.captioned == {"short": 36, "descriptive": 36}
    # resume: drop one finished shard; only it is redone
    (tmp_path / "ray" / "00002_stats.json").unlink()
    again = run(RunConfig(output=str(tmp_path / "ray"), engine="ray", **kw), HashCaptioner())
    assert again.parts_written == 1 and again.parts_skipped == 4
    assert _view(str(tmp_path / "ray")) == _view(str(tmp_path / "local"))


@pytest.mark.slow
def test_ray_engine_refuses_a_captioner_it_cannot_ship(tmp_path, local_ray):
    import threading

    from recaption.records import RecordError

    make_odd_folder(str(tmp_path / "in"), n_good=2)
    cap = HashCaptioner()
    cap.lock = threading.Lock()  # unpicklable, like a loaded transformers model with its context vars
    with pytest.raises(RecordError, match="cannot be pickled"):
        run(RunConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), engine="ray", progress=False), cap)
    # a capped trial runs in one local process whatever the engine (the unpicklable captioner is fine there)
    s = run(RunConfig(input=str(tmp_path / "in"), output=str(tmp_path / "o2"), engine="ray", max_images=3,
                      progress=False), cap)
    assert s.records == 3
