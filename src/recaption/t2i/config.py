"""Frozen dataclass configs for every text-to-image component and run, with named presets.

Each config is saved as JSON next to the checkpoint it built (``run_config.json``), and
:func:`config_from_dict` rebuilds it, so a run can be repeated from its saved config alone.
Presets are registries (dicts of ready configs): ``tiny`` sizes serve the tests, ``world`` sizes the
shapes world (64 px images -> 8x8x4 latents), following DESIGN.md's compute budget.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------------
# component configs


@dataclass(frozen=True)
class VAEConfig:
    """A from-scratch diffusers AutoencoderKL; ``len(block_out_channels) - 1`` halvings of the image side."""

    block_out_channels: tuple[int, ...] = (32, 64, 64, 64)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 64
    mid_block_add_attention: bool = False

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class TextEncoderConfig:
    """A from-scratch T5 encoder (transformers T5Config fields) plus its BPE tokenizer's size."""

    d_model: int = 128
    d_kv: int = 32
    d_ff: int = 512
    num_layers: int = 4
    num_heads: int = 4
    dropout_rate: float = 0.1
    vocab_size: int = 2000
    max_length: int = 192


@dataclass(frozen=True)
class UNetConfig:
    """A diffusers UNet2DConditionModel with cross-attention on the text encoder's token embeddings."""

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    layers_per_block: int = 2
    attention_head_dim: int = 8
    norm_num_groups: int = 32


@dataclass(frozen=True)
class DiffusionConfig:
    """Noise schedule and objective; the fields are diffusers scheduler-config fields.

    ``squaredcos_cap_v2`` is the cosine schedule of Nichol & Dhariwal (2021); ``prediction_type`` is
    ``epsilon`` (Ho et al., 2020) or ``v_prediction`` (Salimans & Ho, 2022).
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"
    rescale_betas_zero_snr: bool = False

    def scheduler_config(self) -> dict[str, Any]:
        """Keyword arguments shared by every diffusers scheduler class we use."""
        return {"num_train_timesteps": self.num_train_timesteps, "beta_schedule": self.beta_schedule,
                "prediction_type": self.prediction_type, "rescale_betas_zero_snr": self.rescale_betas_zero_snr,
                "timestep_spacing": "trailing"}


# --------------------------------------------------------------------------------------------------
# run configs


@dataclass(frozen=True)
class VAETrainConfig:
    """``recaption vae train``: an AutoencoderKL on a dataset's images, from scratch or continued (``init``)."""

    data: str = ""
    out: str = ""
    vae: VAEConfig = field(default_factory=VAEConfig)
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    kl_weight: float = 1e-6
    image_size: int = 64
    seed: int = 0
    mixed_precision: str = "no"
    log_every: int = 50
    limit: int | None = None
    max_minutes: float = 0.0
    init: str = ""  # a saved AutoencoderKL to continue from (its own geometry; ``vae`` is then ignored)
    # with ``init``: train the decoder (and post_quant_conv) only; the encoder, hence the latents, and the saved
    # scaling factor stay exactly as they were, so a U-Net trained on that VAE's latents stays valid
    decoder_only: bool = False


@dataclass(frozen=True)
class T2ITrainConfig:
    """``recaption t2i train``: every choice of a run, saved as ``run_config.json``.

    ``vae``: a directory or hub name of a pretrained AutoencoderKL (required: train one with
    ``recaption vae train``). ``text_encoder``: a directory or hub name of a pretrained T5 (frozen), or
    the name of a from-scratch size in :data:`TEXT_ENCODER_SIZES`, then trained per ``text_mode``:
    ``pretrain`` (span-corruption pretraining on the dataset's captions, then frozen, as close to the
    paper's frozen T5 as a world allows) or ``joint`` (trained with the U-Net).
    ``max_minutes`` time-boxes a run on borrowed hardware (the result then depends on the machine's speed).
    """

    data: str = ""
    out: str = ""
    blend: str = "descriptive=0.95,alt=0.05"
    cfg_dropout: float = 0.1
    captions_from_truth: bool = False
    vae: str = ""
    text_encoder: str = "t5-world"
    text_mode: str = "pretrain"
    text_pretrain_steps: int = 1000
    unet: str = "unet-world"
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    steps: int = 1000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    ema_decay: float = 0.999
    mixed_precision: str = "no"
    seed: int = 0
    image_size: int = 64
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 500
    sample_prompts: tuple[str, ...] = ()
    sample_steps: int = 25
    sample_guidance: float = 2.0
    cache_dir: str = ""
    limit: int | None = None
    max_minutes: float = 0.0  # > 0: stop (checkpoint + export) at the first log step past this wall time


# --------------------------------------------------------------------------------------------------
# presets (registries)

VAE_SIZES: dict[str, VAEConfig] = {
    # 2 blocks (2x): tests only.
    "vae-tiny": VAEConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=16),
    # 4 blocks (8x): 64 px -> 8x8x4 latents, the paper's 8x downsampling at world scale.
    "vae-world": VAEConfig(),
    # the same geometry with a wider, deeper encoder/decoder, for a GPU.
    "vae-world-large": VAEConfig(block_out_channels=(64, 128, 128, 128), layers_per_block=2),
}

TEXT_ENCODER_SIZES: dict[str, TextEncoderConfig] = {
    "t5-tiny": TextEncoderConfig(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, vocab_size=200,
                                 max_length=32),
    "t5-world": TextEncoderConfig(),
}

UNET_SIZES: dict[str, UNetConfig] = {
    "unet-tiny": UNetConfig(block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                            attention_head_dim=4, norm_num_groups=4),
    "unet-world": UNetConfig(),
    "unet-world-large": UNetConfig(block_out_channels=(64, 128, 128)),
}


# --------------------------------------------------------------------------------------------------
# JSON round trip


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass, tagged with its class name."""
    d = dataclasses.asdict(cfg)
    d["_class"] = type(cfg).__name__
    return d


_CLASSES = {c.__name__: c for c in (VAEConfig, TextEncoderConfig, UNetConfig, DiffusionConfig, VAETrainConfig,
                                    T2ITrainConfig)}


def config_from_dict(d: dict[str, Any], cls: type | None = None) -> Any:
    """Rebuild a config saved by :func:`config_to_dict` (lists back to tuples, nested configs rebuilt)."""
    d = dict(d)
    name = d.pop("_class", None)
    cls = cls or _CLASSES.get(name or "")
    if cls is None:
        raise ValueError(f"unknown config class {name!r}; expected one of {sorted(_CLASSES)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v, hint = d[f.name], hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            v = config_from_dict(v, hint)
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[f.name] = v
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    return cls(**kwargs)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write ``cfg`` as indented JSON."""
    Path(path).write_text(json.dumps(config_to_dict(cfg), indent=2, sort_keys=True) + "\n")


def load_config(path: str | Path) -> Any:
    """Read a config written by :func:`save_config`."""
    return config_from_dict(json.loads(Path(path).read_text()))
