"""``recaption t2i train``: latent diffusion on blended captions (Betker et al., 2023, section 3 and app. A).

:func:`train_t2i` is the whole loop; :func:`setup` builds everything it needs (data, frozen VAE latents,
text encoder and its cache, U-Net, optimizer, EMA, caption blender). Runs single-process on CPU by default
and unchanged under ``accelerate launch`` (DDP) with optional mixed precision.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recaption.optim import adamw
from recaption.records import Record
from recaption.t2i import checkpoint as ck
from recaption.t2i.blend import BlendSpec, CaptionBlender
from recaption.t2i.components import build_text_encoder, build_unet, build_vae, fingerprint, latent_geometry
from recaption.t2i.config import TEXT_ENCODER_SIZES, T2ITrainConfig, config_from_dict, config_to_dict
from recaption.t2i.data import (
    BatchIndexer,
    cached_latents,
    cached_text,
    default_cache_dir,
    read_data,
    step_generator,
)
from recaption.t2i.diffusion import alphas_cumprod, diffusion_loss
from recaption.t2i.generate import T2IPipeline
from recaption.t2i.text import TextEncoder, load_text_encoder, pretrain_text_encoder

log = logging.getLogger(__name__)

# fields that may differ between a run and its resumption
_RESUMABLE_CHANGES = {"steps", "log_every", "checkpoint_every", "keep_checkpoints", "sample_every",
                      "sample_prompts", "sample_steps", "sample_guidance", "cache_dir", "data", "out",
                      "max_minutes"}


@dataclass
class Setup:
    """Everything the loop touches. ``emb``/``mask`` hold cached embeddings (frozen text encoder) or token
    ids (joint training); ``lengths`` are the caption lengths in tokens (to trim padding without a sync)."""

    acc: Any
    unet: Any  # prepared (DDP-wrapped under accelerate launch)
    text: TextEncoder  # holds the unwrapped T5
    text_fwd: Any  # the prepared T5 used for the training forward (joint mode), else None
    vae: Any
    stats: torch.Tensor  # (N, 2, C, h, w) scaled latent mean and std
    ids: np.ndarray  # (N, columns) caption ids
    emb: torch.Tensor  # (U, L, D) embeddings, or (U, L) token ids when the text encoder trains
    mask: torch.Tensor  # (U, L)
    lengths: np.ndarray  # (U,)
    blender: CaptionBlender
    indexer: BatchIndexer
    acp: torch.Tensor  # (T,) alphas_cumprod
    opt: Any
    lr: Any
    ema: Any
    params: list
    sample_prompts: list[str]

    def trained_models(self) -> list:
        return [self.unet] + ([self.text_fwd] if self.text_fwd is not None else [])

    def micro_batch(self, cfg: T2ITrainConfig, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                torch.Generator]:
        """Latents (B, C, h, w), text (B, L, D), mask (B, L) and the step's generator for micro-step ``m``."""
        rank, dev = self.acc.process_index, self.acc.device
        idx = self.indexer(m, rank)
        cap = self.blender.choose_ids(self.ids[idx], m, rank)
        length = int(self.lengths[cap].max())
        g = step_generator(cfg.seed, m, rank, dev)
        st = self.stats[torch.from_numpy(idx).to(dev)]  # (B, 2, C, h, w)
        z = st[:, 0] + st[:, 1] * torch.randn(st[:, 0].shape, device=dev, generator=g)
        cap_t = torch.from_numpy(cap).to(dev)
        mask = self.mask[cap_t, :length]
        if self.text_fwd is not None:  # joint training: (B, L) ids -> (B, L, D)
            emb = self.text_fwd(input_ids=self.emb[cap_t, :length], attention_mask=mask).last_hidden_state
        else:
            emb = self.emb[cap_t, :length]
        return z, emb, mask, g


def make_accelerator(mixed_precision: str) -> Any:
    """An ``Accelerator`` at ``mixed_precision``, also when this process already made one at another precision.

    accelerate keeps one process-wide state and refuses a second precision ("restart your runtime"), which
    breaks a notebook or test session that trains twice. In a single process nothing else shares that
    state, so it is reset; under a multi-process launch the launcher's precision stands and a different
    request is a clear error.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, DistributedType

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed_precision):
        if state.get("distributed_type", DistributedType.NO) != DistributedType.NO:
            raise ValueError(
                f"mixed_precision={mixed_precision!r}: this distributed launch already runs at "
                f"{state.get('_mixed_precision')!r}; pass the precision to the launcher instead")
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision)


def train_t2i(cfg: T2ITrainConfig, records: Iterable[Record] | None = None, resume: bool = False,
              on_step: Callable[[int], None] | None = None) -> Path:
    """Train a text-to-image model per ``cfg`` (on ``records`` if given, else ``cfg.data``); returns ``cfg.out``.

    With ``resume``, continues exactly from the newest checkpoint in ``cfg.out``. ``on_step(step)`` is
    called after every optimizer step (tests use it to kill a run).
    """
    out = Path(cfg.out)
    acc = make_accelerator(cfg.mixed_precision)
    ckpt = ck.latest_checkpoint(out) if resume else None
    if resume and ckpt is None:
        log.warning("--resume: no checkpoint in %s; starting from step 0", out)
    _check_resumable(cfg, out, ckpt)
    s = setup(cfg, records, acc, out, ckpt)
    start, running, n_run = 0, torch.zeros((), device=acc.device), 0
    if ckpt is not None:
        state = ck.load_checkpoint(ckpt, acc, s.unet, s.text.model if s.text_fwd is not None else None)
        s.opt.load_state_dict(state["optimizer"])
        s.lr.load_state_dict(state["lr"])
        s.ema.load_state_dict(state["ema"])
        s.blender.load_state_dict(state["blend"])
        start = int(state["step"])
    runlog = ck.RunLog(out, acc.is_main_process, resume_step=start)
    A, t_start, stop = cfg.grad_accum, time.monotonic(), False
    for step in range(start, cfg.steps):
        s.unet.train()
        for micro in range(A):
            m = step * A + micro
            z, emb, mask, g = s.micro_batch(cfg, m)
            with no_sync(acc, s.trained_models(), last=micro == A - 1):
                loss = diffusion_loss(s.unet, z, emb, mask, s.acp, cfg.diffusion.prediction_type, g) / A
                acc.backward(loss)
            running += loss.detach()
        if cfg.max_grad_norm:
            acc.clip_grad_norm_(s.params, cfg.max_grad_norm)
        s.opt.step()
        s.lr.step()
        s.opt.zero_grad(set_to_none=True)
        s.ema.step(acc.unwrap_model(s.unet).parameters())
        n_run += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            rates = {f"blend/{k}": v for k, v in s.blender.rates().items()}
            runlog.log(done, {"loss": float(acc.reduce(running, "mean")) / n_run, "lr": s.lr.get_last_lr()[0],
                              **rates})
            running.zero_()
            n_run = 0
            stop = out_of_time(acc, cfg, t_start)
        if cfg.sample_every and done % cfg.sample_every == 0 and acc.is_main_process:
            sample_grid(cfg, s, out / "samples" / f"step-{done:07d}.png")
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or stop:
            ck.save_checkpoint(out, done, acc, s.unet, s.text.model if s.text_fwd is not None else None,
                               training_state(s), cfg.keep_checkpoints, ema=s.ema)
        if on_step is not None:
            on_step(done)
        if stop:
            log.warning("max_minutes=%g reached: stopping at step %d of %d", cfg.max_minutes, done, cfg.steps)
            break
    if acc.is_main_process:
        export(cfg, s, out)
    runlog.close()
    acc.wait_for_everyone()
    return out


# --------------------------------------------------------------------------------------------------
# helpers


def setup(cfg: T2ITrainConfig, records: Iterable[Record] | None, acc, out: Path, ckpt: Path | None) -> Setup:
    """Data, caches, components, optimizer, EMA and blender of a run (resumed ones reuse out/'s encoders)."""
    from diffusers.training_utils import EMAModel

    dev = acc.device
    spec = BlendSpec.parse(cfg.blend, cfg.cfg_dropout)
    data = read_data(records if records is not None else cfg.data, spec.columns, cfg.captions_from_truth, cfg.limit)
    log.info("%d records, %d distinct captions, blend %s", len(data), len(data.table.texts), spec.describe())
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    vae = build_vae(cfg.vae).to(dev).eval().requires_grad_(False)
    with acc.main_process_first():  # the main process fills the caches; the others then read them
        stats = cached_latents(data, vae, fingerprint(vae), cfg.image_size, cache_dir, dev).to(dev)
    text, trainable = make_text_encoder(cfg, data.table.texts, out, ckpt, acc)
    text.model.to(dev)
    if trainable:
        text.model.train()  # from_pretrained (on resume) returns eval mode; joint training uses T5's dropout
        emb, mask = text.tokenize(data.table.texts)
    else:
        with acc.main_process_first():
            emb, mask = cached_text(data.table.texts, text.eval().requires_grad_(False), fingerprint(text.model),
                                    cache_dir, dev)
    channels, size = latent_geometry(vae, cfg.image_size)
    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg.unet, channels, size, text.dim).to(dev).train()
    params = list(unet.parameters()) + (list(text.model.parameters()) if trainable else [])
    opt = adamw(params, dev, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, foreach=True, model_cls=type(unet),
                   model_config=unet.config)
    ema.to(dev)
    if trainable:
        unet, text_fwd, opt = acc.prepare(unet, text.model, opt)
    else:
        (unet, opt), text_fwd = acc.prepare(unet, opt), None
    prompts = list(cfg.sample_prompts) or [t for t in dict.fromkeys(data.table.texts[i]
                                                                   for i in data.table.ids[:64, 0] if i > 0)][:8]
    return Setup(acc=acc, unet=unet, text=text, text_fwd=text_fwd, vae=vae, stats=stats, ids=data.table.ids,
                 emb=emb.to(dev), mask=mask.to(dev), lengths=mask.sum(1).cpu().numpy(),
                 blender=CaptionBlender(spec, cfg.seed),
                 indexer=BatchIndexer(len(data), cfg.batch_size, cfg.seed, acc.num_processes),
                 acp=alphas_cumprod(cfg.diffusion, dev), opt=opt, lr=lr, ema=ema, params=params,
                 sample_prompts=prompts)


def make_text_encoder(cfg: T2ITrainConfig, texts: list[str], out: Path, ckpt: Path | None, acc
                      ) -> tuple[TextEncoder, bool]:
    """The run's text encoder and whether it trains with the U-Net.

    A pretrained name/dir is frozen. A from-scratch size gets a tokenizer trained on the captions; in
    ``pretrain`` mode it is span-corruption pretrained on them and frozen, in ``joint`` mode it trains
    with the U-Net. Either way it is saved to ``out/`` at once, and a resumed run reloads it from there.
    """
    if cfg.text_mode not in ("pretrain", "joint"):
        raise ValueError(f"text_mode must be 'pretrain' or 'joint', got {cfg.text_mode!r}")
    if cfg.text_encoder not in TEXT_ENCODER_SIZES:
        return build_text_encoder(cfg.text_encoder), False
    max_len = TEXT_ENCODER_SIZES[cfg.text_encoder].max_length
    if ckpt is None and acc.is_main_process:  # built once, by the main process; the others load it
        text = build_text_encoder(cfg.text_encoder, texts, seed=cfg.seed)
        if cfg.text_mode == "pretrain" and cfg.text_pretrain_steps > 0:
            pretrain_text_encoder(text, texts, cfg.text_pretrain_steps, batch_size=cfg.batch_size, seed=cfg.seed,
                                  device=acc.device)
        text.tokenizer.model_max_length = max_len
        text.save_pretrained(out)
    acc.wait_for_everyone()
    if ckpt is None and acc.is_main_process:
        return text, cfg.text_mode == "joint"
    return load_text_encoder(str(out), max_length=max_len), cfg.text_mode == "joint"


def no_sync(acc, models: list, last: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-step of an accumulation."""
    stack = contextlib.ExitStack()
    if not last:
        for m in models:
            stack.enter_context(acc.no_sync(m))
    return stack


def out_of_time(acc, cfg: T2ITrainConfig, t_start: float) -> bool:
    """Whether any process has run past ``cfg.max_minutes`` (all agree: the flag is reduced)."""
    if not cfg.max_minutes:
        return False
    late = torch.tensor(float(time.monotonic() - t_start > 60 * cfg.max_minutes), device=acc.device)
    return bool(acc.reduce(late, "sum") > 0)


def training_state(s: Setup) -> dict[str, Any]:
    return {"optimizer": s.opt.state_dict(), "lr": s.lr.state_dict(), "ema": s.ema.state_dict(),
            "blend": s.blender.state_dict()}


def _check_resumable(cfg: T2ITrainConfig, out: Path, ckpt: Path | None) -> None:
    """Refuse to resume a run whose saved config differs in anything that changes the result."""
    path = out / "run_config.json"
    if ckpt is None or not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        ck.write_json(path, config_to_dict(cfg))
        return
    import json

    old = config_from_dict(json.loads(path.read_text()), T2ITrainConfig)
    diff = [f.name for f in dataclasses.fields(cfg) if f.name not in _RESUMABLE_CHANGES
            and getattr(cfg, f.name) != getattr(old, f.name)]
    if diff:
        raise ValueError(f"cannot resume {out}: settings differ from its run_config.json: {diff}")
    ck.write_json(path, config_to_dict(cfg))


def pipeline(cfg: T2ITrainConfig, s: Setup) -> T2IPipeline:
    return T2IPipeline(unet=s.acc.unwrap_model(s.unet), vae=s.vae, text=s.text, diffusion=cfg.diffusion,
                       latent_size=int(s.stats.shape[-1]), name=cfg.out)


def sample_grid(cfg: T2ITrainConfig, s: Setup, path: Path) -> None:
    """A grid of samples from the EMA weights (the training weights are put back afterwards)."""
    unet = s.acc.unwrap_model(s.unet)
    s.ema.store(unet.parameters())
    s.ema.copy_to(unet.parameters())
    try:
        images = pipeline(cfg, s)(s.sample_prompts, seed=cfg.seed, guidance=cfg.sample_guidance,
                                  steps=cfg.sample_steps)
    finally:
        s.ema.restore(unet.parameters())
    ck.save_grid(images, path)


def export(cfg: T2ITrainConfig, s: Setup, out: Path) -> None:
    """The model directory: EMA U-Net, VAE, text encoder + tokenizer, scheduler, config, blend rates."""
    from diffusers import DDIMScheduler

    unet = s.acc.unwrap_model(s.unet)
    s.ema.store(unet.parameters())
    s.ema.copy_to(unet.parameters())
    unet.save_pretrained(out / "unet")
    s.ema.restore(unet.parameters())
    s.vae.save_pretrained(out / "vae")
    s.text.tokenizer.model_max_length = s.text.max_length
    s.text.save_pretrained(out)
    DDIMScheduler(**cfg.diffusion.scheduler_config(), clip_sample=False, set_alpha_to_one=True).save_pretrained(out / "scheduler")
    ck.write_json(out / "run_info.json", {"blend_counts": s.blender.counts, "blend_rates": s.blender.rates(),
                                          "text_trainable": s.text_fwd is not None, "text_max_length": s.text.max_length})
    log.info("model written to %s (blend rates %s)", out, s.blender.rates())
