"""Commands of the t2i area: ``recaption vae train``, ``recaption t2i train``, ``recaption generate``.

Thin: each parses its options into a config and calls one library function in :mod:`recaption.t2i`.
"""

from __future__ import annotations

from pathlib import Path

import typer

vae_app = typer.Typer(no_args_is_help=True, help="The latent autoencoder (diffusers AutoencoderKL).")
t2i_app = typer.Typer(no_args_is_help=True, help="Text-to-image latent diffusion on blended captions.")


def _user_error(e: Exception):
    from recaption.cli import UserError

    return UserError(str(e))


@vae_app.command("train")
def vae_train(
    data: str = typer.Option(..., help="Dataset (any format recaption.io reads)."),
    out: str = typer.Option(..., help="Output directory (AutoencoderKL.from_pretrained loads it)."),
    steps: int = typer.Option(2000, help="Training steps."),
    size: str = typer.Option("vae-world", help="Preset: vae-world (4 blocks, 8x) or vae-tiny."),
    latent_channels: int = typer.Option(0, help="Override the preset's latent channels (0: keep)."),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(1e-3),
    image_size: int = typer.Option(64),
    seed: int = typer.Option(0),
    limit: int = typer.Option(0, help="Use at most this many records (0: all)."),
    mixed_precision: str = typer.Option("no", help="no | bf16 (GPU)."),
    max_minutes: float = typer.Option(0.0, help="Time box: stop (and save) after this many minutes (0: none)."),
    init: str = typer.Option("", help="Continue this saved VAE (its geometry; --size is then ignored)."),
    decoder_only: bool = typer.Option(False, "--decoder-only", help="With --init: train the decoder only; the "
                                      "latents and scaling factor stay, so a U-Net trained on them stays valid."),
) -> None:
    """Train a VAE on a dataset's images, from scratch or continuing a saved one (--init)."""
    import dataclasses

    from recaption.t2i.config import VAE_SIZES, VAETrainConfig
    from recaption.t2i.vae import train_vae

    if size not in VAE_SIZES:
        raise _user_error(ValueError(f"unknown VAE size {size!r}; choose one of {sorted(VAE_SIZES)}"))
    vcfg = VAE_SIZES[size]
    if latent_channels:
        vcfg = dataclasses.replace(vcfg, latent_channels=latent_channels)
    cfg = VAETrainConfig(data=data, out=out, vae=vcfg, steps=steps, batch_size=batch_size, lr=lr,
                         image_size=image_size, seed=seed, limit=limit or None, mixed_precision=mixed_precision,
                         max_minutes=max_minutes, init=init, decoder_only=decoder_only)
    if init and not (Path(init) / "config.json").is_file():
        raise _user_error(ValueError(f"--init {init}: not a saved VAE (no config.json inside)"))
    try:
        path = train_vae(cfg)
    except ValueError as e:
        raise _user_error(e) from e
    typer.echo(str(path))


@t2i_app.command("train")
def t2i_train(
    data: str = typer.Option(..., help="Dataset (any format recaption.io reads)."),
    out: str = typer.Option(..., help="Run / model directory."),
    blend: str = typer.Option("descriptive=0.95,alt=0.05", help="Caption field probabilities, summing to 1."),
    steps: int = typer.Option(1000),
    seed: int = typer.Option(0),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly from the newest checkpoint in --out."),
    vae: str = typer.Option(..., help="VAE directory (recaption vae train) or hub name."),
    text_encoder: str = typer.Option("t5-world", help="Pretrained T5 dir/name (frozen), or a size: t5-world, t5-tiny."),
    text_mode: str = typer.Option("pretrain", help="From-scratch sizes: pretrain (then frozen) | joint."),
    text_pretrain_steps: int = typer.Option(1000),
    unet: str = typer.Option("unet-world", help="U-Net size: unet-world, unet-world-large, unet-tiny, or a dir."),
    prediction: str = typer.Option("v_prediction", help="v_prediction | epsilon."),
    cfg_dropout: float = typer.Option(0.1, help="Chance of training on the empty caption (CFG)."),
    captions_from_truth: bool = typer.Option(
        False, "--captions-from-truth",
        help="World only: read short/descriptive captions from the scene's TRUE captions (an oracle-caption "
             "upper bound, not a captioner)."),
    batch_size: int = typer.Option(64),
    grad_accum: int = typer.Option(1),
    lr: float = typer.Option(2e-4),
    ema_decay: float = typer.Option(0.999),
    mixed_precision: str = typer.Option("no", help="no | fp16 | bf16 (GPU)."),
    image_size: int = typer.Option(64),
    log_every: int = typer.Option(50),
    checkpoint_every: int = typer.Option(500),
    keep_checkpoints: int = typer.Option(2, help="Checkpoints kept (older ones deleted); raise it for a "
                                                 "CLIP-vs-step curve (recaption eval clip-curve)."),
    sample_every: int = typer.Option(500, help="Sample grid every N steps (0: never)."),
    cache_dir: str = typer.Option("", help="Latent / text-embedding cache (default ~/.cache/recaption/t2i)."),
    limit: int = typer.Option(0, help="Use at most this many records (0: all)."),
    max_minutes: float = typer.Option(0.0, help="Time box: stop (checkpoint + export) after this many minutes."),
) -> None:
    """Train latent diffusion on blended captions."""
    from recaption.t2i.config import DiffusionConfig, T2ITrainConfig
    from recaption.t2i.train import train_t2i

    cfg = T2ITrainConfig(data=data, out=out, blend=blend, cfg_dropout=cfg_dropout,
                         captions_from_truth=captions_from_truth, vae=vae, text_encoder=text_encoder,
                         text_mode=text_mode, text_pretrain_steps=text_pretrain_steps, unet=unet,
                         diffusion=DiffusionConfig(prediction_type=prediction), steps=steps, batch_size=batch_size,
                         grad_accum=grad_accum, lr=lr, ema_decay=ema_decay, mixed_precision=mixed_precision,
                         seed=seed, image_size=image_size, log_every=log_every, checkpoint_every=checkpoint_every,
                         keep_checkpoints=keep_checkpoints,
                         sample_every=sample_every, cache_dir=cache_dir, limit=limit or None,
                         max_minutes=max_minutes)
    try:
        path = train_t2i(cfg, resume=resume)
    except ValueError as e:
        raise _user_error(e) from e
    typer.echo(str(path))


def generate_cmd(
    model: str = typer.Option(..., help="Model directory written by `recaption t2i train`."),
    out: str = typer.Option(..., help="Output directory: NNNNN.png + NNNNN.json per prompt."),
    prompts: str = typer.Option("", help="Prompt file: .txt (one per line), .json or .jsonl."),
    prompt: list[str] = typer.Option([], "--prompt", help="A prompt (repeatable)."),
    seed: int = typer.Option(0),
    guidance: float = typer.Option(2.0, help="Classifier-free guidance scale (choose on validation prompts)."),
    steps: int = typer.Option(25),
    sampler: str = typer.Option("ddim", help="ddim | dpm | euler."),
    batch_size: int = typer.Option(64),
    upsample: str = typer.Option("", help="Rewrite prompts with this recaption.upsample backend first."),
) -> None:
    """Generate images from prompts (deterministic given the seed)."""
    from recaption.t2i.generate import generate_to_dir, read_prompts

    texts = list(prompt) + (read_prompts(prompts) if prompts else [])
    if not texts:
        raise _user_error(ValueError("no prompts: give --prompt and/or --prompts FILE"))
    try:
        paths = generate_to_dir(model, texts, out, seed=seed, guidance=guidance, steps=steps, sampler=sampler,
                                batch_size=batch_size, upsample=upsample or None)
    except (ValueError, NotImplementedError) as e:
        raise _user_error(e) from e
    typer.echo(f"{len(paths)} images in {out}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.add_typer(vae_app, name="vae")
    app.add_typer(t2i_app, name="t2i")
    app.command("generate")(generate_cmd)
