"""Commands of the captioner area: ``recaption clip train``, ``recaption captioner train``,
``recaption caption`` and ``recaption audit``."""

from __future__ import annotations

import json
from enum import Enum

import typer

clip_app = typer.Typer(no_args_is_help=True, help="Contrastive image-text models: train a world CLIP.")
captioner_app = typer.Typer(no_args_is_help=True, help="The clip-prefix captioner: train its three stages.")


class Stage(str, Enum):
    alt = "alt"
    short = "short"
    descriptive = "descriptive"


class Mode(str, Enum):
    short = "short"
    descriptive = "descriptive"


class Strategy(str, Enum):
    greedy = "greedy"
    beam = "beam"
    nucleus = "nucleus"


def _user_errors(fn):  # noqa: ANN001, ANN202
    """Turn ValueError/CaptionerError from the library into one-line user errors."""
    import functools

    @functools.wraps(fn)
    def wrapped(*a, **k):  # noqa: ANN002, ANN003, ANN202
        from recaption.captioners.base import CaptionerError
        from recaption.cli import UserError
        from recaption.records import RecordError

        try:
            return fn(*a, **k)
        except RecordError:
            raise
        except (ValueError, CaptionerError, KeyError) as e:
            raise UserError(str(e)) from e
    return wrapped


@clip_app.command("train")
@_user_errors
def clip_train(data: str = typer.Option(..., "--data", help="World dataset (any recaption.io format)."),
               out: str = typer.Option(..., "--out", help="Output folder (CLIPModel + tokenizer + processor)."),
               steps: int = typer.Option(1500, "--steps"),
               text_field: str = typer.Option("alt", "--text-field",
                                              help="Caption field to learn from; truth.descriptive for a "
                                                   "scoring CLIP (a measuring instrument, never the captioner's)."),
               batch_size: int = typer.Option(128, "--batch-size"),
               heldout: int = typer.Option(500, "--heldout", help="Held-out pairs for retrieval accuracy."),
               seed: int = typer.Option(0, "--seed"),
               max_minutes: float = typer.Option(0.0, "--max-minutes",
                                                 help="Time box: stop after this many minutes (0: none)."),
               vision_arch: str = typer.Option("vit", "--vision-arch",
                                               help="Image tower: vit (CLIPModel) or resnet (a ResNetModel "
                                                    "tower: reads small shapes far sooner from scratch)."),
               hard_negatives: str = typer.Option(
                   "", "--hard-negatives",
                   help="NegCLIP: also contrast each caption with copies that swap one attribute word: 'world' "
                        "(the shapes world's words) or a JSON file of word groups (recaption.clip.negatives)."),
               device: str = typer.Option("cpu", "--device")) -> None:
    """Train a small CLIP from scratch; prints held-out zero-shot retrieval accuracy."""
    from recaption.clip.train import ClipTrainConfig, train_clip

    cfg = ClipTrainConfig(text_field=text_field, steps=steps, batch_size=batch_size, heldout=heldout, seed=seed,
                          max_minutes=max_minutes, vision_arch=vision_arch, hard_negatives=hard_negatives)
    typer.echo(json.dumps(train_clip(data, out, cfg, device=device)))


@captioner_app.command("train")
@_user_errors
def captioner_train(
        stage: Stage = typer.Option(..., "--stage", help="alt (stage 1), short (2) or descriptive (3)."),
        data: str = typer.Option(..., "--data", help="Dataset (any recaption.io format)."),
        out: str = typer.Option(..., "--out", help="Checkpoint folder (resumed if it holds a run)."),
        init: str = typer.Option(None, "--init", help="Checkpoint to start from (needed for short/descriptive)."),
        clip: str = typer.Option(None, "--clip", help="CLIP name or folder for a new stage-1 model (default: train one on the alt-text first)."),
        steps: int = typer.Option(0, "--steps", help="0 = the stage's default."),
        finetune_size: str = typer.Option("0.05", "--finetune-size",
                                          help="Fine-tune set: a fraction (0.05) or a count (1000) of records."),
        pairs: str = typer.Option(None, "--pairs", help="JSONL {key, caption} fine-tune pairs (real data)."),
        lm: str = typer.Option("", "--lm", help="Pretrained causal LM name/path (default: tiny GPT-2 from scratch)."),
        batch_size: int = typer.Option(0, "--batch-size", help="0 = the stage's default."),
        lr: float = typer.Option(0.0, "--lr", help="0 = the stage's default."),
        seed: int = typer.Option(0, "--seed"),
        finetune_vision: bool = typer.Option(
            False, "--finetune-vision/--frozen-vision",
            help="Stage 1: also train the CLIP vision tower with the captioning loss (later stages inherit it)."),
        vision_lr_scale: float = typer.Option(0.5, "--vision-lr-scale",
                                              help="With --finetune-vision: the tower's LR relative to the LM's."),
        prefix_pool: int = typer.Option(1, "--prefix-pool",
                                        help="Stage 1: average-pool the image token grid by this factor "
                                             "(2: 8x8 -> 4x4 tokens, a shorter, cheaper LM sequence)."),
        prefix_grid: int = typer.Option(0, "--prefix-grid",
                                        help="Stage 1: pool the image token map to a G x G grid instead "
                                             "(3 matches the shapes world's 3x3 layout; 0: off)."),
        extra_layer: list[int] = typer.Option(
            None, "--extra-layer",
            help="Also feed this hidden state of the vision tower to the prefix (an index >= 0, 0 = its embeddings; "
                 "repeatable; a multi-level prefix: "
                 "for the world's ResNet tower, 1 = its first 16x16 stage). With --init, added to the loaded "
                 "model, starting from zero so the run begins where the checkpoint left off."),
        tokenizer_texts: list[str] = typer.Option(
            None, "--tokenizer-texts",
            help="Stage 1: more texts for the new tokenizer (repeatable): 'short' or 'descriptive' (in the world, "
                 "the true captions of that stage's fine-tune subset, chosen by --finetune-size and --seed as the "
                 "stage will) or a JSONL file of {key, caption} pairs. Only the vocabulary sees them."),
        lm_width: int = typer.Option(256, "--lm-width", help="Stage 1, no --lm: width of the GPT-2 from scratch."),
        lm_layers: int = typer.Option(4, "--lm-layers", help="Stage 1, no --lm: its layers."),
        lm_heads: int = typer.Option(4, "--lm-heads", help="Stage 1, no --lm: its attention heads."),
        recon_weight: float = typer.Option(
            0.0, "--recon-weight",
            help="With --finetune-vision: weight of a self-supervised loss that redraws each image from the "
                 "tower's feature map, so the tower keeps what the captions never ask for (0: off)."),
        bow_weight: float = typer.Option(
            0.0, "--bow-weight",
            help="Weight of a bag-of-words loss: the image prefix, read through the LM's word embeddings, "
                 "predicts the words of its caption (0: off)."),
        hflip: float = typer.Option(
            0.0, "--hflip",
            help="Chance of drawing an example mirrored left to right, its caption's direction words swapped "
                 "(--hflip-swap); captions that quote text are never mirrored (0: off)."),
        hflip_swap: str = typer.Option("left:right", "--hflip-swap",
                                       help="Word pairs a mirror swaps, comma-separated ('left:right')."),
        freeze_vision: bool = typer.Option(
            False, "--freeze-vision",
            help="With an --init whose tower was tuned: keep the tower as it is in this stage (and later ones); "
                 "its features are cached once, so a step is cheaper."),
        dropout: float = typer.Option(
            None, "--dropout", help="Set the mapper's and LM's dropout from this stage on (default: the model's)."),
        shift: int = typer.Option(
            0, "--shift",
            help="With a tuned tower: move each drawn image by up to this many pixels each way, edges repeated "
                 "(an augmentation that keeps the caption true; 0: off)."),
        ema: float = typer.Option(
            0.0, "--ema",
            help="Save a moving average of the weights with this decay (e.g. 0.999) instead of the last weights; "
                 "the training weights are kept in the train state, so a resumed run goes on exactly (0: off)."),
        self_train: bool = typer.Option(
            False, "--self-train",
            help="short/descriptive, with an --init already fine-tuned at this stage: the init first captions every "
                 "record outside the fine-tune set (no truth read; saved to OUT/self_train_captions.jsonl, resumable), "
                 "then the stage trains on those captions plus the true set (noisy-student self-training)."),
        self_train_max: int = typer.Option(
            0, "--self-train-max",
            help="With --self-train: caption at most this many other records (0: all); the stage holds every image "
                 "it trains on in memory (uint8 at the tower's size: 150 KB an image at 224 px)."),
        self_train_views: int = typer.Option(
            1, "--self-train-views", help="With --self-train: test-time views of the teacher's captions."),
        resume: bool = typer.Option(True, "--resume/--no-resume"),
        max_minutes: float = typer.Option(0.0, "--max-minutes",
                                          help="Time box for this run: stop and save after this many minutes "
                                               "(0: none); a later run resumes the remaining steps."),
        device: str = typer.Option("cpu", "--device")) -> None:
    """Train one stage of the clip-prefix captioner (alt-text, then short, then descriptive)."""
    from recaption.captioners.clip_prefix import ClipPrefixConfig
    from recaption.captioners.train_prefix import CaptionerTrainConfig, train_captioner

    cfg = CaptionerTrainConfig(stage=stage.value, steps=steps, batch_size=batch_size, lr=lr,
                               finetune_size=finetune_size, seed=seed, max_minutes=max_minutes,
                               vision_lr_scale=vision_lr_scale, recon_weight=recon_weight, bow_weight=bow_weight,
                               hflip=hflip, hflip_swap=hflip_swap, freeze_vision=freeze_vision,
                               dropout=dropout, shift=shift, ema=ema, self_train=self_train,
                               self_train_max=self_train_max, self_train_views=self_train_views)
    model_cfg = ClipPrefixConfig(lm=lm, finetune_vision=finetune_vision, prefix_pool=prefix_pool, prefix_grid=prefix_grid,
                                 lm_width=lm_width, lm_layers=lm_layers, lm_heads=lm_heads,
                                 extra_layers=tuple(extra_layer or ()))
    from recaption.captioners.train_prefix import finetune_texts, read_pairs

    extra: list[str] = []
    world_stages = [t for t in tokenizer_texts or [] if t in ("short", "descriptive")]
    if world_stages:  # one read of the dataset for all of them
        from recaption.clip.data import iter_records

        try:
            extra += finetune_texts(list(iter_records(data)), world_stages, finetune_size, seed)
        except KeyError as e:  # not a world record: no true captions to choose from
            raise ValueError(f"--tokenizer-texts {' '.join(world_stages)}: {e.args[0]}; on real data give the "
                             f"fine-tune pairs file (JSONL of {{key, caption}}) instead") from None
    for t in tokenizer_texts or []:
        if t not in world_stages:
            extra += list(read_pairs(t).values())
    metrics = train_captioner(data, out, cfg, init=init, clip=clip, model_cfg=model_cfg,
                              pairs=pairs, device=device, resume=resume, tokenizer_texts=extra,
                              add_layers=extra_layer or ())
    typer.echo(json.dumps(metrics))


def caption(captioner: str = typer.Option(..., "--captioner", help="DIR, hf:NAME, openai:MODEL@URL (see docs)."),
            mode: Mode = typer.Option(..., "--mode"),
            input: str = typer.Option(..., "--input", help="Dataset (any recaption.io format)."),
            out: str = typer.Option(..., "--out", help="Output JSONL: {key, caption, mode, provenance}."),
            batch_size: int = typer.Option(64, "--batch-size"),
            strategy: Strategy = typer.Option(None, "--strategy", help="clip-prefix decoding (default greedy)."),
            limit: int = typer.Option(None, "--limit", help="Caption at most this many records."),
            device: str = typer.Option("cpu", "--device"),
            dtype: str = typer.Option(None, "--dtype", help="e.g. bfloat16 (transformers VLMs)."),
            views: int = typer.Option(1, "--views", help="clip-prefix: read each image this many times, moved by "
                                                        "whole pixels, and write one caption from all readings."),
            combine: str = typer.Option("probs", "--combine", help="clip-prefix views: 'probs' (average the "
                                                                   "next-token probabilities) or 'features'."),
            view_shift: int = typer.Option(1, "--view-shift", help="clip-prefix views: offsets up to this many "
                                                                    "pixels each way ((2n+1)^2 views at most)."),
            ) -> None:
    """Caption a dataset into a JSONL file (a plain loop; the scalable job is `recaption run`)."""
    _caption(captioner, mode.value, input, out, batch_size, strategy.value if strategy else None, limit, device,
             dtype, views, combine, view_shift)


@_user_errors
def _caption(spec: str, mode: str, input: str, out: str, batch_size: int, strategy: str | None,
             limit: int | None, device: str, dtype: str | None, views: int = 1, combine: str = "probs",
             view_shift: int = 1) -> None:
    from recaption.captioners import load_captioner
    from recaption.captioners.caption_file import caption_records
    from recaption.captioners.clip_prefix import set_decode
    from recaption.io import read_records

    cap = set_decode(load_captioner(spec, device=device, dtype=dtype), batch_size=batch_size, views=views,
                     combine=combine, view_shift=view_shift, **({"strategy": strategy} if strategy else {}))
    typer.echo(json.dumps(caption_records(cap, read_records(input), mode, out, batch_size=batch_size, limit=limit)))


def audit(input: str = typer.Option(..., "--input", help="The dataset the captions describe."),
          captions: str = typer.Option(..., "--captions", help="JSONL from `recaption caption`."),
          out: str = typer.Option(..., "--out", help="Output JSON with the figures by name."),
          clip_tokenizer: str = typer.Option(None, "--clip-tokenizer",
                                             help="Tokenizer (name/path) to count CLIP tokens; default: an "
                                                  "approximation (see recaption.eval.audit)."),
          mode: Mode = typer.Option(None, "--mode", help="Caption mode (default: read from the JSONL).")) -> None:
    """Audit captions: against the scene in the world; length, vocabulary, boilerplate, repetition anywhere."""
    _audit(input, captions, out, clip_tokenizer, mode.value if mode else None)


@_user_errors
def _audit(input: str, captions: str, out: str, clip_tokenizer: str | None, mode: str | None) -> None:
    from rich.console import Console

    from recaption.eval.audit import audit_file, audit_table

    report = audit_file(input, captions, out, clip_tokenizer=clip_tokenizer, mode=mode)
    Console().print(audit_table(report))


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.add_typer(clip_app, name="clip")
    app.add_typer(captioner_app, name="captioner")
    app.command("caption")(caption)
    app.command("audit")(audit)
