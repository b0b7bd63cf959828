"""One factory for the three networks of latent diffusion, each a library class built from a config or
loaded by name: the VAE (diffusers AutoencoderKL), the text encoder (transformers T5 encoder, see
:mod:`recaption.t2i.text`) and the U-Net (diffusers UNet2DConditionModel, cross-attending to T5 tokens).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from recaption.t2i.config import (
    TEXT_ENCODER_SIZES,
    UNET_SIZES,
    VAE_SIZES,
    TextEncoderConfig,
    UNetConfig,
    VAEConfig,
)
from recaption.t2i.text import TextEncoder, load_text_encoder, new_text_encoder

log = logging.getLogger(__name__)


def new_vae(cfg: VAEConfig):
    """A from-scratch AutoencoderKL: ``len(block_out_channels)`` encoder/decoder blocks."""
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=cfg.block_out_channels,
                         layers_per_block=cfg.layers_per_block, latent_channels=cfg.latent_channels,
                         norm_num_groups=cfg.norm_num_groups, sample_size=cfg.sample_size, scaling_factor=1.0,
                         mid_block_add_attention=cfg.mid_block_add_attention)


def load_vae(name_or_dir: str):
    """A pretrained AutoencoderKL by hub name (e.g. ``stabilityai/sd-vae-ft-mse``) or directory.

    A directory holding ``vae/`` (a t2i run, a diffusers pipeline) is read from that subfolder.
    """
    from diffusers import AutoencoderKL

    p = Path(name_or_dir)
    if (p / "vae").is_dir():
        p = p / "vae"
    elif not p.exists() and (name_or_dir.startswith((".", "/", "~")) or p.suffix):
        raise FileNotFoundError(f"VAE {name_or_dir!r} not found (give a directory or a hub name)")
    return AutoencoderKL.from_pretrained(str(p))


def build_vae(spec: str | VAEConfig):
    """A VAE: a config or preset name (``vae-tiny``, ``vae-world``) builds a new one, else load by name/dir."""
    if isinstance(spec, VAEConfig):
        return new_vae(spec)
    if spec in VAE_SIZES:
        return new_vae(VAE_SIZES[spec])
    if not spec:
        raise ValueError("no VAE given: train one with `recaption vae train` or name a pretrained one")
    return load_vae(spec)


def build_text_encoder(spec: str | TextEncoderConfig, captions: Iterable[str] = (), seed: int = 0,
                       max_length: int | None = None) -> TextEncoder:
    """A T5 text encoder: a size (``t5-tiny``, ``t5-world``) builds one with a tokenizer trained on
    ``captions``; anything else is a pretrained T5 by hub name (e.g. ``google/t5-v1_1-xxl``) or directory."""
    if isinstance(spec, TextEncoderConfig):
        return new_text_encoder(spec, captions, seed)
    if spec in TEXT_ENCODER_SIZES:
        return new_text_encoder(TEXT_ENCODER_SIZES[spec], captions, seed)
    return load_text_encoder(spec, max_length=max_length)


def new_unet(cfg: UNetConfig, latent_channels: int, sample_size: int, cross_attention_dim: int):
    """A from-scratch UNet2DConditionModel on (latent_channels, sample_size, sample_size) latents."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
                                down_block_types=cfg.down_block_types, up_block_types=cfg.up_block_types,
                                block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
                                attention_head_dim=cfg.attention_head_dim, norm_num_groups=cfg.norm_num_groups,
                                cross_attention_dim=cross_attention_dim)


def build_unet(spec: str | UNetConfig, latent_channels: int, sample_size: int, cross_attention_dim: int):
    """A U-Net: a config or preset (``unet-tiny``, ``unet-world``, ``unet-world-large``), else load by dir."""
    if isinstance(spec, UNetConfig):
        return new_unet(spec, latent_channels, sample_size, cross_attention_dim)
    if spec in UNET_SIZES:
        return new_unet(UNET_SIZES[spec], latent_channels, sample_size, cross_attention_dim)
    from diffusers import UNet2DConditionModel

    p = Path(spec)
    unet = UNet2DConditionModel.from_pretrained(str(p / "unet" if (p / "unet").is_dir() else p))
    if unet.config.cross_attention_dim != cross_attention_dim or unet.config.in_channels != latent_channels:
        raise ValueError(f"U-Net {spec!r} expects {unet.config.in_channels} latent channels and text dim "
                         f"{unet.config.cross_attention_dim}, got {latent_channels} and {cross_attention_dim}")
    return unet


def latent_geometry(vae, image_size: int) -> tuple[int, int]:
    """(latent channels, latent side) of ``vae`` for square images of ``image_size`` px."""
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    if image_size % down:
        raise ValueError(f"image size {image_size} is not divisible by the VAE's downsampling {down}")
    return int(vae.config.latent_channels), image_size // down


def fingerprint(module: torch.nn.Module, extra: str = "") -> str:
    """A content hash of a module's parameters and buffers (keys caches to the exact weights)."""
    h = hashlib.sha256(extra.encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


REGISTRY: dict[str, Callable] = {"vae": build_vae, "text_encoder": build_text_encoder, "unet": build_unet}
