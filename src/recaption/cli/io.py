"""Commands of the io area: ``recaption convert`` and ``recaption info``."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    """Add ``convert`` and ``info`` to the root app."""

    @app.command("convert")
    def convert_cmd(
        src: str = typer.Argument(..., help="Input: folder, .tar / brace pattern / glob of tars, parquet file or folder; local or fsspec URL."),
        dst: str = typer.Argument(..., help="Output folder (local or fsspec URL)."),
        to: str = typer.Option(..., "--to", help="Output format: folder | wds | parquet."),
        src_format: str = typer.Option(None, "--from", help="Input format (detected when left out)."),
        shard_size: int = typer.Option(1000, help="Records per output shard (wds, parquet)."),
        txt_field: str = typer.Option("alt", help="Caption stored in the .txt sidecar / member / caption column."),
        overwrite: bool = typer.Option(False, help="Write into a non-empty output folder."),
    ) -> None:
        """Convert a dataset between formats without losing a caption or a metadata field."""
        from recaption.cli import UserError
        from recaption.io import convert

        try:
            summary = convert(src, dst, to, src_format=src_format, shard_size=shard_size, txt_field=txt_field,
                              overwrite=overwrite, progress=True)
        except FileExistsError as e:
            raise UserError(f"{e}; use --overwrite") from e
        typer.echo(f"wrote {summary['records']} records ({summary['errors']} with errors) in "
                   f"{summary['shards']} {to} shards to {dst}")

    @app.command("info")
    def info_cmd(
        path: str = typer.Argument(..., help="A dataset in any supported format."),
        src_format: str = typer.Option(None, "--format", help="Input format (detected when left out)."),
        txt_field: str = typer.Option("alt", help="Caption field the .txt sidecars hold."),
        as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
    ) -> None:
        """Count records, errors and caption fields of a dataset."""
        from recaption.io import info

        d = info(path, src_format, txt_field)
        if as_json:
            typer.echo(json.dumps(d, indent=2))
            return
        typer.echo(f"{d['path']}: {d['format']}, {d['shards']} shards, {d['records']} records, "
                   f"{d['images']} images, {d['errors']} errors")
        typer.echo("captions: " + (", ".join(f"{k}={v}" for k, v in d["captions"].items()) or "none"))
        typer.echo("image types: " + (", ".join(f"{k}={v}" for k, v in d["image_exts"].items()) or "none"))
        typer.echo("meta keys: " + (", ".join(f"{k}={v}" for k, v in d["meta_keys"].items()) or "none"))
