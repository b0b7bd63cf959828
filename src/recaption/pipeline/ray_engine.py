"""The Ray engine: Ray Data spreads the input shards over an actor pool of captioners.

Each actor loads the captioner once (``--num-gpus-per-worker`` GPUs each, ``--workers`` actors) and runs
the local engine on one input shard at a time (read, background decode, caption, atomic write with the
stats marker), so both engines write byte-for-byte the same layout and the same records, and resume is
the same: the project's own shard markers, not Ray Data's job checkpointing (which breaks on webdataset
input and can deadlock on small machines). Per-record failures are caught inside the actor, so one bad
image or batch never aborts the Ray job.

On a cluster: start Ray on each node (``ray start --head`` / ``ray start --address=HEAD:6379``), put the
data and the output on storage every node sees (a shared filesystem or an fsspec URL such as
``s3://``), and run ``RAY_ADDRESS=auto recaption run --engine ray --workers N --num-gpus-per-worker 1 ...``
on the head node. Install with ``pip install 'recaption[ray]'`` (Ray Data, about 330 MB).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from recaption.pipeline.core import Plan, RunConfig, Summary
from recaption.records import RecordError

log = logging.getLogger(__name__)


class ShardWorker:
    """A Ray Data actor: holds one captioner, recaptions whole input shards (given by their index)."""

    def __init__(self, cfg: RunConfig, plan: Plan, captioner: Any) -> None:
        import logging as _logging

        _logging.basicConfig(level=_logging.INFO)
        self.cfg = dataclasses.replace(cfg, progress=False, max_images=None)
        self.plan = plan
        self.captioner = captioner if hasattr(captioner, "caption") else captioner()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from recaption.pipeline.local import run_local

        out = []
        for i in batch["unit"]:
            unit = self.plan.units[int(i)]
            sub = Plan(self.plan.input_format, self.plan.output_format, [unit], done=self.plan.done)
            out.append(run_local(self.cfg, self.captioner, sub).to_json())
        return {"unit": batch["unit"], "summary": out}


def run_ray(cfg: RunConfig, captioner: Any, plan: Plan, total: int | None = None) -> Summary:
    """Run the job on Ray (a local instance, or the cluster ``RAY_ADDRESS`` names)."""
    try:
        import ray
    except ImportError as e:
        raise RecordError("the ray engine needs Ray Data: pip install 'recaption[ray]'") from e
    from tqdm.auto import tqdm

    if cfg.max_images is not None:
        raise RecordError("--max-images works with the local engine only")
    if hasattr(captioner, "caption"):
        from ray import cloudpickle

        try:
            cloudpickle.dumps(captioner)
        except Exception as e:  # noqa: BLE001 - whatever makes it unpicklable
            raise RecordError("the ray engine ships the captioner to its actors and this one cannot be pickled "
                              f"({type(e).__name__}); pass a zero-argument factory, or use --captioner") from e
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False

    summary = Summary()
    todo = plan.pending(summary)
    if not todo:
        return summary
    ds = ray.data.from_items([{"unit": i} for i in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(ShardWorker, fn_constructor_kwargs={"cfg": cfg, "plan": plan, "captioner": captioner},
                        batch_size=1, compute=ray.data.ActorPoolStrategy(size=cfg.workers), num_cpus=1, num_gpus=cfg.num_gpus_per_worker or None)
    with tqdm(total=total, unit="img", desc="recaption (ray)", disable=not cfg.progress) as bar:
        for row in ds.iter_rows():
            part = Summary.from_json(row["summary"])
            summary.merge(part)
            bar.update(part.written_this_run)
    return summary
