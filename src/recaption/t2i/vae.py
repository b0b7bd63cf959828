"""``recaption vae train``: a from-scratch diffusers AutoencoderKL on a dataset's images (the world's VAE).

Objective: L1 + MSE reconstruction plus a small KL term (Rombach et al., 2022, without the adversarial
and perceptual terms, which a flat-shaded world does not need). After training, the latent scaling factor
is set to 1 / std of the latents, as Stable Diffusion does, and saved in the VAE's config.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from recaption.optim import adamw
from recaption.records import ORIGINAL, Record
from recaption.t2i.checkpoint import RunLog, write_json
from recaption.t2i.components import new_vae
from recaption.t2i.config import VAETrainConfig, config_to_dict
from recaption.t2i.data import decode_images, read_data
from recaption.t2i.generate import auto_device

log = logging.getLogger(__name__)


def train_vae(cfg: VAETrainConfig, records: Iterable[Record] | None = None,
              device: str | torch.device | None = None) -> Path:
    """Train a VAE per ``cfg`` on ``records`` (or ``cfg.data``); saves it to ``cfg.out`` (diffusers layout)."""
    dev = torch.device(device) if device else auto_device()
    if cfg.decoder_only and not cfg.init:
        raise ValueError("decoder_only fine-tunes a saved VAE's decoder: give init (a VAE directory)")
    out = Path(cfg.out)
    data = read_data(records if records is not None else cfg.data, (ORIGINAL,), limit=cfg.limit)
    pixels = torch.cat([(decode_images(data.images[i:i + 1024], cfg.image_size) * 127.5 + 127.5).round()
                        .to(torch.uint8) for i in range(0, len(data), 1024)]).to(dev)  # (N, 3, H, W)
    log.info("VAE training on %d images of %d px, %s", len(data), cfg.image_size, dev)
    torch.manual_seed(cfg.seed)
    if cfg.init:  # continue a saved VAE (e.g. one a time-boxed run on borrowed hardware stopped)
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(cfg.init, torch_dtype=torch.float32).to(dev).train()
        if int(vae.config.sample_size) != cfg.image_size:
            log.warning("VAE %s was built for %s px; training it on %d px", cfg.init, vae.config.sample_size,
                        cfg.image_size)
        log.info("continuing VAE %s", cfg.init)
    else:
        vae = new_vae(cfg.vae).to(dev).train()
    if cfg.decoder_only:  # the encoder side fixes the latents: frozen, and run without gradients
        for m in (vae.encoder, vae.quant_conv):
            if m is not None:
                m.requires_grad_(False)
        log.info("decoder only: the encoder and the scaling factor (%.4f) stay as they are",
                 vae.config.scaling_factor)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = adamw(params, dev, lr=cfg.lr, weight_decay=0.0)
    warm = max(1, min(100, cfg.steps // 10))
    g = torch.Generator(device=dev).manual_seed(cfg.seed)
    autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if cfg.mixed_precision == "bf16"
                else contextlib.nullcontext())
    runlog = RunLog(out, enabled=True)
    running, t_start = torch.zeros((), device=dev), time.monotonic()
    for step in range(cfg.steps):
        # warmup, then cosine to 10% over the steps or the time budget, whichever runs out first
        spent = (time.monotonic() - t_start) / (60 * cfg.max_minutes) if cfg.max_minutes else 0.0
        progress = max(step / cfg.steps, spent)
        lr = cfg.lr * min(1.0, (step + 1) / warm) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(data), (cfg.batch_size,), device=dev, generator=g)
        x = pixels[idx].float() / 127.5 - 1.0  # (B, 3, H, W)
        with autocast:
            with torch.set_grad_enabled(not cfg.decoder_only):
                post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, device=dev, generator=g)
            rec = vae.decode(z).sample.float()
        kl = post.kl().float().mean() / x[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running += loss.detach()
        # the time box is checked every step (steps can be slow); the step it stops at is logged
        stop = bool(cfg.max_minutes) and time.monotonic() - t_start > 60 * cfg.max_minutes
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps or stop:
            n = (step % cfg.log_every) + 1
            runlog.log(step + 1, {"loss": float(running) / n, "lr": lr})
            running.zero_()
        if stop:
            log.warning("max_minutes=%g reached: stopping at step %d of %d", cfg.max_minutes, step + 1, cfg.steps)
            break
    vae.eval()
    if cfg.decoder_only:  # same encoder, same latents: keep the factor a U-Net was trained with
        sf = float(vae.config.scaling_factor)
    else:
        sf = 1.0 / latent_std(vae, pixels[:2048])
        vae.register_to_config(scaling_factor=sf)
    vae.save_pretrained(out)
    write_json(out / "vae_train_config.json", config_to_dict(cfg))
    runlog.close()
    log.info("VAE saved to %s (scaling factor %.4f)", out, sf)
    return out


@torch.no_grad()
def latent_std(vae, pixels: torch.Tensor, batch_size: int = 256) -> float:
    """Std of sampled latents over uint8 ``pixels`` (N, 3, H, W)."""
    zs = []
    for i in range(0, len(pixels), batch_size):
        zs.append(vae.encode(pixels[i:i + batch_size].float() / 127.5 - 1.0).latent_dist.sample().float())
    return float(torch.cat(zs).std())


@torch.no_grad()
def reconstruct(vae, images: Sequence[bytes], size: int, batch_size: int = 128) -> list:
    """Encode (latent mean) and decode images; returns PIL images (for checking what the latents keep)."""
    from PIL import Image

    dev = next(vae.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = decode_images(images[i:i + batch_size], size).to(dev)
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)
        arr = ((rec + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out += [Image.fromarray(a) for a in arr]
    return out
