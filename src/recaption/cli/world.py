"""Commands of the world area: ``recaption world make|parse|prompts|judge`` and the top-level ``demo``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from enum import Enum

import typer

world_app = typer.Typer(no_args_is_help=True, help="The shapes world: datasets, oracle parser, prompt suite, judge.")


class Fmt(str, Enum):
    folder = "folder"
    wds = "wds"
    parquet = "parquet"


class Split(str, Enum):
    val = "val"
    test = "test"
    all = "all"


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the world's input errors (ValueError subclasses naming the input) into one-line user errors."""
    from recaption.cli import UserError
    from recaption.world.jobs import WorldJobError
    from recaption.world.prompts import PromptError
    from recaption.world.scene import SceneError

    try:
        yield
    except (WorldJobError, PromptError, SceneError) as e:
        raise UserError(str(e)) from e


@world_app.command("make")
def make(n: int = typer.Option(1000, "--n", help="Number of scenes."),
         seed: int = typer.Option(0, "--seed", help="Dataset seed (record i of seed S is always the same)."),
         out: str = typer.Option(..., "--out", help="Output folder (local path or fsspec URL)."),
         format: Fmt = typer.Option(Fmt.wds, "--format", help="folder | wds | parquet."),
         size: int = typer.Option(64, "--size", help="Image side in pixels."),
         shard_size: int = typer.Option(1000, "--shard-size", help="Records per shard."),
         workers: int = typer.Option(2, "--workers", help="Worker processes."),
         progress: bool = typer.Option(True, "--progress/--no-progress")) -> None:
    """Write a world dataset: images, alt-text captions, and the truth (scene + captions) under meta.world."""
    from recaption.world.dataset import WorldConfig, write_dataset

    with _user_errors():
        summary = write_dataset(out, n, WorldConfig(seed=seed, size=size), format=format.value,
                                shard_size=shard_size, workers=workers, progress=progress)
    typer.echo(json.dumps(summary))


@world_app.command("parse")
def parse_cmd(input: str = typer.Option(..., "--input", help="A dataset (folder, shards or parquet)."),
              out: str = typer.Option(..., "--out", help="Output JSONL: one {key, scene[, exact]} per line."),
              format: Fmt | None = typer.Option(None, "--format", help="Input format (default: detected)."),
              progress: bool = typer.Option(True, "--progress/--no-progress")) -> None:
    """Read every image back into a scene with the oracle parser."""
    from recaption.world.jobs import parse_dataset

    with _user_errors():
        summary = parse_dataset(input, out, format=format.value if format else None, progress=progress)
    typer.echo(json.dumps(summary))


@world_app.command("prompts")
def prompts_cmd(out: str = typer.Option(..., "--out", help="Output JSONL of prompts with constraints."),
                split: Split = typer.Option(Split.all, "--split", help="val | test | all.")) -> None:
    """Write the prompt suite (validation and test splits have disjoint prompts)."""
    from recaption.world.jobs import write_prompts

    with _user_errors():
        typer.echo(json.dumps(write_prompts(out, split.value)))


@world_app.command("judge")
def judge_cmd(prompts: str = typer.Option(..., "--prompts", help="Prompts JSONL (from `world prompts`)."),
              images: str = typer.Option(..., "--images",
                                         help="Folder of images named <prompt_id>.png or <prompt_id>_<k>.png."),
              out: str = typer.Option(..., "--out", help="Output JSONL: one verdict per image."),
              progress: bool = typer.Option(True, "--progress/--no-progress")) -> None:
    """Judge images against their prompts' constraints with the oracle (per-constraint reasons)."""
    from recaption.world.jobs import judge_images

    with _user_errors():
        typer.echo(json.dumps(judge_images(prompts, images, out, progress=progress)))


def demo(out: str = typer.Option("demo_out", "--out", help="Output folder."),
         n: int = typer.Option(200, "--n", help="Number of scenes."),
         seed: int = typer.Option(0, "--seed"),
         format: Fmt = typer.Option(Fmt.wds, "--format"),
         progress: bool = typer.Option(True, "--progress/--no-progress")) -> None:
    """The main job: generate a world dataset, print what is in it, and write a contact sheet PNG."""
    from recaption.world.jobs import format_summary, run_demo

    with _user_errors():
        summary = run_demo(out, n, seed, format=format.value, progress=progress)
    typer.echo(format_summary(summary))


def register(app: typer.Typer) -> None:
    """Add the ``world`` group and the top-level ``demo`` command to the root app."""
    app.add_typer(world_app, name="world")
    app.command("demo")(demo)
