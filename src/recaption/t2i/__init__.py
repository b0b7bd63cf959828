"""Text-to-image latent diffusion trained on blended captions (Betker et al., 2023, section 3, appendix A).

Modules: :mod:`~recaption.t2i.config` (frozen configs and presets), :mod:`~recaption.t2i.components` (one
factory for VAE, T5 text encoder and U-Net), :mod:`~recaption.t2i.blend` (caption blending),
:mod:`~recaption.t2i.diffusion` (objective, samplers, guidance), :mod:`~recaption.t2i.data` (caches),
:mod:`~recaption.t2i.train` (the loop), :mod:`~recaption.t2i.vae` (VAE training),
:mod:`~recaption.t2i.generate` (``generate(model, prompts, seed, ...)``).

Heavy modules load lazily: ``from recaption.t2i import generate`` imports torch only when used.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"generate": "recaption.t2i.generate", "T2IPipeline": "recaption.t2i.generate",
         "train_t2i": "recaption.t2i.train", "train_vae": "recaption.t2i.vae",
         "BlendSpec": "recaption.t2i.blend", "CaptionBlender": "recaption.t2i.blend"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recaption.t2i' has no attribute {name!r}")
