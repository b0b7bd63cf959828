"""``recaption eval ...``: CLIP score, DrawBench (VLM judge), T2I-CompBench BLIP-VQA, the world evaluation."""

from __future__ import annotations

from pathlib import Path

import typer

eval_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="Evaluate prompt following: CLIP score, DrawBench, T2I-CompBench, world oracle judge.")


@eval_app.command("clipscore")
def clipscore(
    clip: str = typer.Option("openai/clip-vit-base-patch32", help="CLIP name or folder (recaption.clip.load_clip)."),
    images: str = typer.Option(None, help="Folder of <key>.png images."),
    captions: str = typer.Option(None, help="JSONL: {key, <field>: text, ...} or {key, captions: {...}}."),
    records: str = typer.Option(None, help="Instead of --images/--captions: any recaption.io dataset."),
    fields: str = typer.Option("alt,descriptive", help="Comma-separated caption fields (truth:descriptive for "
                                                       "the world's true captions)."),
    out: Path = typer.Option(Path("eval_out"), help="Output folder: clipscore.json, clipscore.md."),
    limit: int = typer.Option(None, help="Score at most this many images."),
    device: str = typer.Option("cpu"),
    seed: int = typer.Option(0, help="Bootstrap seed."),
) -> None:
    """CLIP score (100 x cosine, torchmetrics' definition) of images against several caption fields."""
    from recaption.eval.clipscore import clipscore_table, run_clipscore

    res = run_clipscore(clip, [f.strip() for f in fields.split(",") if f.strip()], out_dir=out, images=images,
                        captions=captions, records=records, limit=limit, device=device, seed=seed)
    typer.echo(clipscore_table(res))


@eval_app.command("drawbench")
def drawbench(
    verdicts: list[Path] = typer.Option(None, "--verdicts", help="Verdict JSON(s) to aggregate (repeatable)."),
    categories: Path = typer.Option(None, help="TSV with prompt and category columns (default: packaged DrawBench)."),
    images: Path = typer.Option(None, help="Folder of <prompt index>_<sample>.png to judge."),
    judge: str = typer.Option(None, help="Judge: http(s)://... OpenAI-compatible vision endpoint, or a local VLM."),
    judge_model: str = typer.Option(None, "--judge-model", help="Model name at the endpoint."),
    per_prompt: int = typer.Option(4, help="Images per prompt."),
    index_base: str = typer.Option("auto", help="Prompt indices in verdict keys count from 0, 1 or auto."),
    out: Path = typer.Option(Path("eval_out"), help="Output folder: drawbench.json/.md/.png (+ verdicts)."),
    n_boot: int = typer.Option(1000),
    seed: int = typer.Option(0),
) -> None:
    """Aggregate DrawBench verdicts (--verdicts), or judge images first (--images --judge)."""
    from recaption.cli import UserError
    from recaption.eval.drawbench import judge_images, load_judge, load_prompts, results_table, run_drawbench

    files = list(verdicts or [])
    if images is not None:
        if not judge:
            raise UserError("--images needs --judge NAME_OR_URL")
        j = load_judge(judge, model=judge_model)
        vpath = out / f"verdicts_{images.name}.json"
        judge_images(images, j, load_prompts(categories), per_prompt=per_prompt, out_path=vpath)
        files.append(vpath)
    if not files:
        raise UserError("give --verdicts FILE.json, or --images DIR --judge NAME_OR_URL")
    res = run_drawbench(files, out_dir=out, categories=categories, index_base=index_base, n_boot=n_boot, seed=seed)
    typer.echo(results_table(res))


@eval_app.command("compbench")
def compbench(
    images: Path = typer.Option(..., help="Folder of <prompt index>_<sample>.png (or a prompts file column)."),
    category: str = typer.Option(..., help="color, shape or texture."),
    blip: str = typer.Option("Salesforce/blip-vqa-base", help="BLIP VQA name or folder."),
    prompts: Path = typer.Option(None, help="Prompt file (default: packaged <category>_val.txt)."),
    chunker: str = typer.Option("auto", help="Noun phrases: spacy, rules or auto (spacy if installed)."),
    out: Path = typer.Option(Path("eval_out")),
    device: str = typer.Option("cpu"),
    seed: int = typer.Option(0),
) -> None:
    """T2I-CompBench disentangled BLIP-VQA score for an attribute-binding category."""
    from recaption.eval.compbench import compbench_table, run_compbench

    res = run_compbench(images, category, blip=blip, prompts=prompts, chunker=chunker, out_dir=out, device=device,
                        seed=seed)
    typer.echo(compbench_table(res))


@eval_app.command("world")
def world(
    model: list[Path] = typer.Option(..., "--model", help="Trained world t2i model folder(s) (repeatable)."),
    out: Path = typer.Option(..., help="Output folder."),
    clip: str = typer.Option(None, help="World CLIP (instrument) for the CLIP score; skipped if not given."),
    guidance: str = typer.Option("1,2,3,5", help="Classifier-free guidance values tried on the val split."),
    val_limit: int = typer.Option(None, help="Use at most this many val prompts."),
    test_limit: int = typer.Option(None, help="Use at most this many test prompts."),
    seeds: str = typer.Option("0", help="Comma-separated sampling seeds for the test split."),
    steps: int = typer.Option(25, help="Sampling steps."),
    upsample: str = typer.Option(None, help="Upsampler backend: generate from upsampled prompts (judge sees "
                                            "the originals)."),
    grid_prompts: int = typer.Option(8, help="Image grids for this many test prompts."),
    n_boot: int = typer.Option(1000),
) -> None:
    """Oracle judge over the world prompt suite (guidance chosen on val, applied to test) + world CLIP score."""
    from recaption.eval.world_eval import model_generate_fn, run_world_eval, world_table

    fns = {m.name or str(m): model_generate_fn(str(m), steps=steps) for m in model}
    res = run_world_eval([], out, clip=clip, guidances=[float(g) for g in guidance.split(",") if g.strip()],
                         seeds=[int(s) for s in seeds.split(",") if s.strip()], val_limit=val_limit,
                         test_limit=test_limit, n_boot=n_boot, generate_fns=fns, upsample=upsample,
                         grid_prompts=grid_prompts)
    typer.echo(world_table(res))


@eval_app.command("plot-clip")
def plot_clip(
    points: Path = typer.Option(..., help="TSV/CSV with model, step, score columns, or JSONL of such objects."),
    out: Path = typer.Option(Path("eval_out/clip_vs_step.png")),
    ylabel: str = typer.Option("CLIP score"),
) -> None:
    """Plot CLIP score against training step, one line per model (the paper's Figures 4 and 5)."""
    from recaption.eval.report import plot_clip_vs_step, read_points

    typer.echo(f"-> {plot_clip_vs_step(read_points(points), out, ylabel=ylabel)}")


@eval_app.command("clip-curve")
def clip_curve(
    model: list[str] = typer.Option(..., "--model", help="t2i run directory, or NAME=DIR (repeatable)."),
    records: str = typer.Option(..., help="Evaluation dataset (any recaption.io format) holding the fields."),
    clip: str = typer.Option("openai/clip-vit-base-patch32", help="CLIP name or folder (recaption.clip.load_clip)."),
    fields: str = typer.Option("alt,descriptive", help="Caption fields: prompts, and what each image is scored "
                                                       "against (truth:descriptive for the world's true captions)."),
    limit: int = typer.Option(100, help="Evaluation captions per field."),
    guidance: float = typer.Option(2.0),
    steps: int = typer.Option(25, help="Sampling steps."),
    sampler: str = typer.Option("ddim"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("eval_out/clip_curve"), help="Folder: curve.json/.md, points_*.tsv, plots."),
    device: str = typer.Option("cpu"),
) -> None:
    """CLIP score against training step for each run's checkpoints, per caption field (Figures 4 and 5)."""
    from recaption.cli import UserError
    from recaption.eval.curve import clip_curve as run_curve
    from recaption.eval.curve import curve_table, parse_model_specs

    try:
        res = run_curve(parse_model_specs(model), clip, records, [f.strip() for f in fields.split(",") if f.strip()],
                        limit=limit, seed=seed, guidance=guidance, steps=steps, sampler=sampler, device=device,
                        out_dir=out)
    except ValueError as e:
        raise UserError(str(e)) from e
    typer.echo(curve_table(res))
    typer.echo(f"-> {out}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.add_typer(eval_app, name="eval")
