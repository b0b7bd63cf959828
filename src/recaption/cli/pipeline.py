"""Commands of the pipeline area: ``recaption run``, the batch recaption job."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add ``run`` to the root app."""

    @app.command("run")
    def run_cmd(
        input: str = typer.Option(..., "--input", "-i", help="Image folder, tar shard(s) (path, brace pattern or glob), parquet file or folder; local or fsspec URL."),
        output: str = typer.Option(..., "--output", "-o", help="Output folder; rerunning the same command resumes it."),
        captioner: str = typer.Option(..., "--captioner", "-c", help="Captioner checkpoint dir, model name or endpoint spec."),
        modes: str = typer.Option("short,descriptive", help="Comma-separated caption modes."),
        output_format: str = typer.Option(None, help="folder | wds | parquet (default: the input's)."),
        input_format: str = typer.Option(None, help="folder | wds | parquet (default: detected)."),
        engine: str = typer.Option("local", help="local | ray."),
        batch_size: int = typer.Option(16, help="Images per captioner call."),
        device: str = typer.Option("cpu", help="Captioner device (cpu, cuda, cuda:1, ...)."),
        dtype: str = typer.Option(None, help="Captioner dtype (float32, bfloat16, float16)."),
        workers: int = typer.Option(1, help="Captioner workers, each with its own captioner: processes (local engine) or actors (ray)."),
        decode_workers: int = typer.Option(2, help="Background image-decode threads (per captioner worker)."),
        prefetch: int = typer.Option(4, help="Batches decoded ahead of the captioner."),
        num_gpus_per_worker: float = typer.Option(0.0, help="GPUs per captioner actor (ray engine)."),
        max_images: int = typer.Option(None, help="Stop after this many input images (a trial: runs in one local process)."),
        skip_existing: bool = typer.Option(True, "--skip-existing/--recaption-existing", help="Keep captions records already have in a requested mode."),
        overwrite: bool = typer.Option(False, help="Redo everything, ignoring finished output shards."),
        fail_on_error: bool = typer.Option(False, help="Exit 1 if any record ends with an error."),
        txt_field: str = typer.Option("alt", help="Caption the .txt sidecars / members hold."),
        part_size: int = typer.Option(None, help="Split each input shard into output parts of N records (default: 1000 for folders, whole shards otherwise)."),
        max_side: int = typer.Option(None, help="Shrink images larger than this on decode."),
        seed: int = typer.Option(0, help="Seed for the captioner's sampling."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
        views: int = typer.Option(1, help="clip-prefix: read each image this many times, moved by whole pixels, and write one caption from all readings."),
        combine: str = typer.Option("probs", help="clip-prefix views: probs (average next-token probabilities) | features."),
        view_shift: int = typer.Option(1, help="clip-prefix views: offsets up to this many pixels each way ((2n+1)^2 views at most)."),
    ) -> None:
        """Caption every image in each mode and write all original fields plus the new captions."""
        from recaption.pipeline import RunConfig, run

        cfg = RunConfig(input=input, output=output, captioner=captioner,
                        modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
                        input_format=input_format, output_format=output_format, engine=engine,
                        batch_size=batch_size, device=device, dtype=dtype, workers=workers,
                        decode_workers=decode_workers, prefetch=prefetch, num_gpus_per_worker=num_gpus_per_worker,
                        max_images=max_images, skip_existing=skip_existing, overwrite=overwrite,
                        fail_on_error=fail_on_error, txt_field=txt_field, part_size=part_size, max_side=max_side,
                        seed=seed, progress=progress, views=views, combine=combine,
                        view_shift=view_shift)
        summary = run(cfg)
        typer.echo(summary.line())
        if summary.failed_shards or (fail_on_error and summary.errors):
            raise typer.Exit(1)
