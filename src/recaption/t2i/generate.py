"""Text-to-image generation from a trained model directory (or live modules during training).

A model directory is what ``recaption t2i train`` writes: ``unet/`` (diffusers, EMA weights), ``vae/``,
``text_encoder/`` + ``tokenizer/`` (transformers), ``scheduler/`` and ``run_config.json``.
Every image gets its own generator seeded with ``seed + index``, so an image depends on the seed and its
position in the prompt list, never on the batch size.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recaption.t2i.checkpoint import checkpoint_dir
from recaption.t2i.config import DiffusionConfig, config_from_dict
from recaption.t2i.diffusion import SAMPLERS, guided_denoiser
from recaption.t2i.text import TextEncoder, load_text_encoder

log = logging.getLogger(__name__)


def auto_device() -> torch.device:
    """cuda if available, else cpu."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class T2IPipeline:
    """U-Net + VAE + text encoder + diffusion config: ``pipe(prompts, seed=...)`` -> PIL images."""

    unet: Any
    vae: Any
    text: TextEncoder
    diffusion: DiffusionConfig
    latent_size: int
    name: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, checkpoint: int | None = None) -> T2IPipeline:
        """Load each component with its library's ``from_pretrained`` from a t2i run directory.

        ``checkpoint``: a training step whose checkpoint (``checkpoints/step-NNNNNNN``) supplies the EMA U-Net
        (and the text encoder, when it was trained with the U-Net) instead of the final export.
        """
        from diffusers import AutoencoderKL, UNet2DConditionModel

        d = Path(model_dir)
        if not (d / "unet").is_dir():
            raise FileNotFoundError(f"{d} is not a t2i model directory (no unet/ inside)")
        if checkpoint is not None:
            _checkpoint_with_ema(d, checkpoint)  # before loading anything: a wrong step fails fast
        device = torch.device(device) if device else auto_device()
        unet = UNet2DConditionModel.from_pretrained(str(d / "unet"), torch_dtype=dtype).to(device).eval()
        vae = AutoencoderKL.from_pretrained(str(d / "vae"), torch_dtype=dtype).to(device).eval()
        run = json.loads((d / "run_config.json").read_text()) if (d / "run_config.json").exists() else {}
        diffusion = config_from_dict(run["diffusion"], DiffusionConfig) if "diffusion" in run else \
            _diffusion_from_scheduler(d / "scheduler")
        info = json.loads((d / "run_info.json").read_text()) if (d / "run_info.json").exists() else {}
        text = load_text_encoder(str(d), max_length=info.get("text_max_length"))
        text.model.to(device=device, dtype=dtype or torch.float32).eval()
        pipe = cls(unet=unet, vae=vae, text=text, diffusion=diffusion, latent_size=int(unet.config.sample_size),
                   name=str(d))
        if checkpoint is not None:
            pipe.use_checkpoint(d, checkpoint)
        return pipe

    def use_checkpoint(self, model_dir: str | Path, step: int) -> None:
        """Swap in the EMA U-Net of checkpoint ``step`` of run ``model_dir`` (and its text encoder, when that was
        trained with the U-Net), in place: a curve over many checkpoints loads the VAE and text encoder once."""
        from diffusers import UNet2DConditionModel

        ckpt = _checkpoint_with_ema(Path(model_dir), step)
        ema = UNet2DConditionModel.from_pretrained(str(ckpt / "unet_ema"))
        self.unet.load_state_dict(ema.state_dict())  # copies into this U-Net's device and dtype
        if (ckpt / "text_encoder.pt").is_file():
            self.text.model.load_state_dict(torch.load(ckpt / "text_encoder.pt", map_location="cpu", weights_only=True))
        self.name = f"{Path(model_dir)}@{step}"

    @torch.no_grad()
    def latents(self, prompts: Sequence[str], seed: int, guidance: float = 2.0, steps: int = 25,
                sampler: str = "ddim", start_index: int = 0) -> torch.Tensor:
        """Sampled latents (B, C, h, w) for one batch of prompts; image i uses seed + start_index + i."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
        dev, dtype = self.device, next(self.unet.parameters()).dtype
        cond = self.text.encode(list(prompts), device=dev)
        uncond = self.text.encode([""] * len(prompts), device=dev)
        cond, uncond = (cond[0].to(dtype), cond[1]), (uncond[0].to(dtype), uncond[1])
        gens = [torch.Generator(device=dev).manual_seed(seed + start_index + i) for i in range(len(prompts))]
        shape = (len(prompts), int(self.unet.config.in_channels), self.latent_size, self.latent_size)
        return SAMPLERS[sampler](guided_denoiser(self.unet, cond, uncond, guidance), shape,
                                 diffusion=self.diffusion, steps=steps, generator=gens, device=dev, dtype=dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list:
        """Latents -> PIL images (undoing the VAE's scaling and shift)."""
        from PIL import Image

        sf = float(self.vae.config.scaling_factor)
        shift = float(getattr(self.vae.config, "shift_factor", None) or 0.0)
        x = self.vae.decode(latents.to(next(self.vae.parameters()).dtype) / sf + shift).sample
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(np.ascontiguousarray(a)) for a in x]

    def __call__(self, prompts: Sequence[str], seed: int = 0, guidance: float = 2.0, steps: int = 25,
                 sampler: str = "ddim", batch_size: int = 64) -> list:
        modes = (self.unet.training, self.text.model.training)
        self.unet.eval()
        self.text.model.eval()
        try:
            images = []
            for i in range(0, len(prompts), batch_size):
                batch = list(prompts[i:i + batch_size])
                images += self.decode(self.latents(batch, seed, guidance, steps, sampler, start_index=i))
        finally:
            self.unet.train(modes[0])
            self.text.model.train(modes[1])
        return images


def _checkpoint_with_ema(d: Path, step: int) -> Path:
    ckpt = checkpoint_dir(d, step)
    if not (ckpt / "unet_ema").is_dir():
        have = ", ".join(str(s) for s in checkpoint_steps(d)) or "none with EMA weights"
        raise FileNotFoundError(f"{d}: no checkpoint at step {step} with EMA weights (have: {have})")
    return ckpt


def checkpoint_steps(model_dir: str | Path) -> list[int]:
    """The training steps of a run's complete checkpoints that hold EMA weights (``unet_ema/``), ascending."""
    root = Path(model_dir) / "checkpoints"
    if not root.is_dir():
        return []
    steps = []
    for p in root.glob("step-*"):
        if (p / "unet_ema").is_dir() and (p / "state.pt").is_file() and p.name[5:].isdigit():
            steps.append(int(p.name[5:]))
    return sorted(steps)


def _diffusion_from_scheduler(path: Path) -> DiffusionConfig:
    cfg = json.loads((path / "scheduler_config.json").read_text())
    return DiffusionConfig(**{k: cfg[k] for k in ("num_train_timesteps", "beta_schedule", "prediction_type",
                                                  "rescale_betas_zero_snr") if k in cfg})


def generate(model: str | Path | T2IPipeline, prompts: Sequence[str], seed: int = 0, guidance: float = 2.0,
             steps: int = 25, sampler: str = "ddim", batch_size: int = 64) -> list:
    """Images (PIL) for ``prompts`` from a model directory or a loaded :class:`T2IPipeline`; deterministic
    given the seed (image i uses ``seed + i``)."""
    pipe = model if isinstance(model, T2IPipeline) else T2IPipeline.from_pretrained(model)
    return pipe(prompts, seed=seed, guidance=guidance, steps=steps, sampler=sampler, batch_size=batch_size)


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: one per line (.txt), a JSON list of strings or of objects with ``prompt``, or
    JSON lines of such objects."""
    p = Path(path)
    text = p.read_text()
    items: list[Any]
    if p.suffix == ".json":
        items = json.loads(text)
    elif p.suffix == ".jsonl":
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        items = [line.strip() for line in text.splitlines() if line.strip()]
    out = []
    for it in items:
        if isinstance(it, dict):
            if "prompt" not in it:
                raise ValueError(f"{p}: prompt object without a 'prompt' field: {it!r}")
            it = it["prompt"]
        out.append(str(it))
    return out


def upsample_prompts(prompts: Sequence[str], backend: str) -> list[str]:
    """Rewrite prompts with an LLM upsampler backend from :mod:`recaption.upsample` (the paper's section 5)."""
    from recaption import upsample

    loader = getattr(upsample, "load_upsampler", None)
    if loader is None:
        raise NotImplementedError("recaption.upsample has no load_upsampler yet; generate without --upsample")
    return list(loader(backend).upsample(list(prompts)))


def generate_to_dir(model: str | Path, prompts: Sequence[str], out: str | Path, seed: int = 0,
                    guidance: float = 2.0, steps: int = 25, sampler: str = "ddim", batch_size: int = 64,
                    upsample: str | None = None) -> list[Path]:
    """Write ``out/00000.png`` + ``out/00000.json`` (prompt, seed, steps, guidance, sampler, model) per prompt."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    used = upsample_prompts(prompts, upsample) if upsample else list(prompts)
    pipe = T2IPipeline.from_pretrained(model)
    images = generate(pipe, used, seed=seed, guidance=guidance, steps=steps, sampler=sampler,
                      batch_size=batch_size)
    paths = []
    for i, (img, prompt, text) in enumerate(zip(images, prompts, used, strict=True)):
        path = out / f"{i:05d}.png"
        img.save(path)
        meta = {"prompt": prompt, "seed": seed, "image_seed": seed + i, "index": i, "steps": steps,
                "guidance": guidance, "sampler": sampler, "model": str(model)}
        if upsample:
            meta.update(upsampled_prompt=text, upsample=upsample)
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
        paths.append(path)
    return paths
