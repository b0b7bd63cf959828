"""``recaption upsample``: upsample a prompt file; ``recaption upsample train``: train the world upsampler."""

from __future__ import annotations

from pathlib import Path

import typer

upsample_app = typer.Typer(add_completion=False, invoke_without_command=True,
                           help="Upsample short prompts into 15-80 word descriptions (paper Appendix C).")


@upsample_app.callback(invoke_without_command=True)
def upsample(
    ctx: typer.Context,
    backend: str = typer.Option(None, "--backend", "-b",
                                help="http(s)://... endpoint, openai[:MODEL], world:DIR, hf:NAME, a folder, or "
                                     "'template' (a deterministic stand-in, not an LLM)."),
    prompts: Path = typer.Option(None, "--prompts", "-p", help="Prompt file: .txt, .tsv/.csv (prompt column), .jsonl."),
    out: Path = typer.Option(None, "--out", "-o", help="Output JSONL: prompt, upsampled, backend, words, error."),
    model: str = typer.Option(None, "--model", help="Model name for an OpenAI-compatible endpoint."),
    timeout: float = typer.Option(60.0, help="Seconds per request (endpoints)."),
    retries: int = typer.Option(4, help="Retries on timeouts, 429 and 5xx (endpoints)."),
    resume: bool = typer.Option(False, help="Skip prompts already in --out without error."),
    device: str = typer.Option("cpu", help="Device for local models."),
) -> None:
    """Upsample every prompt of --prompts into --out (one JSONL line per prompt, errors recorded per prompt)."""
    if ctx.invoked_subcommand is not None:
        return
    from recaption.cli import UserError

    if backend is None or prompts is None or out is None:
        raise UserError("recaption upsample needs --backend NAME_OR_URL, --prompts FILE and --out FILE.jsonl "
                        "(or the `train` subcommand)")
    from recaption.upsample import Upsampler, load_backend, upsample_file

    be = load_backend(backend, model=model, timeout_s=timeout, retries=retries, device=device)
    summary = upsample_file(Upsampler(be), prompts, out, resume=resume)
    typer.echo(f"{summary['ok']}/{summary['written']} upsampled ({summary['errors']} errors, {summary['cut']} cut "
               f"to 80 words; words {summary['min_words']}-{summary['max_words']}) with {summary['backend']} "
               f"-> {summary['out']}")


@upsample_app.command("train")
def train(
    data: str = typer.Option(..., "--data", help="World records (any recaption.io format) or a JSONL of "
                                                 "{short, descriptive} pairs."),
    out: Path = typer.Option(..., "--out", help="Output folder for the world upsampler."),
    steps: int = typer.Option(1500, help="Training steps."),
    batch_size: int = typer.Option(32),
    lr: float = typer.Option(2e-3),
    n_layer: int = typer.Option(2),
    n_embd: int = typer.Option(128),
    n_head: int = typer.Option(4),
    vocab_size: int = typer.Option(600),
    n_positions: int = typer.Option(320, help="Context length; an edit sequence holds two descriptions."),
    edit_share: float = typer.Option(0.5, help="Share of training steps on follow-up edits (world records "
                                               "only: a JSONL of pairs has no scenes to edit)."),
    arch: str = typer.Option("gpt2", help="gpt2 (learned positions) or llama (rotary positions; reached a lower "
                                          "loss in the same CPU minutes, see bench/RESULTS.md)."),
    bucket: bool = typer.Option(True, help="Batch sequences of similar length (less padding)."),
    limit: int = typer.Option(None, help="Use at most this many records or pairs."),
    seed: int = typer.Option(0),
    threads: int = typer.Option(None, help="torch threads (1 is fastest for tiny models on a busy machine)."),
) -> None:
    """Train a small GPT-2 on world text to turn short captions into descriptive ones and to rewrite a
    description for a follow-up request ("make the star bigger")."""
    from recaption.upsample.world_lm import WorldLMConfig, load_training_text, train_world_lm

    if threads:
        import torch

        torch.set_num_threads(threads)

    from recaption.cli import UserError

    try:
        cfg = WorldLMConfig(steps=steps, batch_size=batch_size, lr=lr, n_layer=n_layer, n_embd=n_embd,
                            n_head=n_head, vocab_size=vocab_size, seed=seed, n_positions=n_positions,
                            edit_share=edit_share, arch=arch, bucket=bucket)
    except ValueError as e:
        raise UserError(str(e)) from e
    pairs, edits = load_training_text(data, limit=limit, edits=edit_share > 0, seed=seed)
    path = train_world_lm(pairs, out, cfg, edits=edits)
    typer.echo(f"world upsampler -> {path} ({len(pairs)} pairs, {len(edits)} follow-up edits)")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.add_typer(upsample_app, name="upsample")
