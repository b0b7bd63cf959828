"""A CLIP with a convolutional image tower: transformers ``ResNetModel`` + ``CLIPTextModel`` + two projections.

Why: in the shapes world a small ViT (64 px, 8 px patches) trained from scratch reads colour at once and
shape hardly at all; told the one object's shape directly it reached 0.33 after 600 steps, while a small
ResNet of the same cost reached 0.93 (bench/RESULTS.md, "What the vision tower sees"). The objects are
12-19 px, two or three patches across, and a convolution's locality is the prior a tiny model needs.
The paper's CLIP family had ResNet towers too (RN50 and kin); the public ViT-B/32 stays the default for
real data.

The model offers what the rest of recaption uses of ``CLIPModel``: ``get_image_features``,
``get_text_features``, ``vision_model(..., output_hidden_states=True).hidden_states`` as token sequences
``(B, 1 + H*W, C)`` (the spatial mean first, in the place of ViT's class token, then the feature map in
raster order), ``logit_scale``, ``forward(..., return_loss=True).loss`` (symmetric InfoNCE), and
``save_pretrained`` / ``from_pretrained``. On disk each part loads with its own library:
``vision/`` with ``ResNetModel.from_pretrained``, ``text/`` with ``CLIPTextModel.from_pretrained``; the
projections and the temperature sit in ``heads.safetensors``, the geometry in ``conv_clip.json``.
"""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace
from typing import Any

import torch

CONFIG_NAME = "conv_clip.json"
HEADS_NAME = "heads.safetensors"


def is_conv_clip(path: str) -> bool:
    """Whether ``path`` is a saved :class:`ConvClipModel`."""
    return os.path.isfile(os.path.join(str(path), CONFIG_NAME))


class ConvTower(torch.nn.Module):
    """``ResNetModel`` whose outputs read like a ViT's: token sequences ``(B, 1 + H*W, C)``."""

    default_feature_layer = -1  # the last stage (8x8 at 64 px with two stages); a ViT's default is -2

    def __init__(self, resnet: Any) -> None:
        super().__init__()
        self.resnet = resnet

    @staticmethod
    def tokens(fmap: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, 1 + H*W, C)``: the spatial mean, then each position."""
        grid = fmap.flatten(2).transpose(1, 2)
        return torch.cat([grid.mean(1, keepdim=True), grid], dim=1)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False, **_: Any) -> Any:
        out = self.resnet(pixel_values=pixel_values, output_hidden_states=output_hidden_states)
        last = out.last_hidden_state
        hidden = tuple(self.tokens(h) for h in out.hidden_states) if output_hidden_states else None
        return SimpleNamespace(last_hidden_state=self.tokens(last), pooler_output=last.mean((2, 3)),
                               hidden_states=hidden)


class ConvClipModel(torch.nn.Module):
    """ResNet image tower + CLIP text tower, projected to a shared space and trained contrastively."""

    def __init__(self, vision_config: Any, text_config: Any, projection_dim: int = 128, image_size: int = 64,
                 logit_scale_init: float = math.log(1 / 0.07)) -> None:
        from transformers import CLIPTextModel, ResNetModel

        super().__init__()
        self.vision_model = ConvTower(ResNetModel(vision_config))
        self.text_model = CLIPTextModel(text_config)
        width = int(vision_config.hidden_sizes[-1])
        self.visual_projection = torch.nn.Linear(width, projection_dim, bias=False)
        self.text_projection = torch.nn.Linear(text_config.hidden_size, projection_dim, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(float(logit_scale_init)))
        vision_config.image_size = image_size  # read by the captioner's geometry, as on a CLIPVisionConfig
        vision_config.hidden_size = width
        self.config = SimpleNamespace(vision_config=vision_config, text_config=text_config,
                                      projection_dim=projection_dim, image_size=image_size)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual_projection.weight.dtype

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected, unnormalised image embeddings ``(B, projection_dim)``."""
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected, unnormalised text embeddings ``(B, projection_dim)`` (CLIP's end-token pooling)."""
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return self.text_projection(out.pooler_output)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                attention_mask: torch.Tensor | None = None, return_loss: bool = False) -> Any:
        """CLIPModel's contract: ``logits_per_image`` ``(B_img, B_txt)``, ``logits_per_text``, and the loss."""
        img = torch.nn.functional.normalize(self.get_image_features(pixel_values), dim=-1)
        txt = torch.nn.functional.normalize(self.get_text_features(input_ids, attention_mask), dim=-1)
        logits_per_text = self.logit_scale.exp() * txt @ img.T
        loss = None
        if return_loss:
            target = torch.arange(len(txt), device=txt.device)
            loss = (torch.nn.functional.cross_entropy(logits_per_text, target)
                    + torch.nn.functional.cross_entropy(logits_per_text.T, target)) / 2
        return SimpleNamespace(loss=loss, logits_per_text=logits_per_text, logits_per_image=logits_per_text.T,
                               text_embeds=txt, image_embeds=img)

    def save_pretrained(self, path: str) -> None:
        """``vision/`` and ``text/`` in their libraries' layout, the heads and geometry beside them."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        self.vision_model.resnet.save_pretrained(os.path.join(path, "vision"))
        self.text_model.save_pretrained(os.path.join(path, "text"))
        save_file({"visual_projection.weight": self.visual_projection.weight.detach().contiguous(),
                   "text_projection.weight": self.text_projection.weight.detach().contiguous(),
                   "logit_scale": self.logit_scale.detach().reshape(1)}, os.path.join(path, HEADS_NAME))
        with open(os.path.join(path, CONFIG_NAME), "w") as f:
            json.dump({"architecture": "resnet+clip-text", "projection_dim": self.config.projection_dim,
                       "image_size": self.config.image_size}, f, indent=2)

    @classmethod
    def from_pretrained(cls, path: str, dtype: torch.dtype | None = None) -> ConvClipModel:
        """Load what :meth:`save_pretrained` wrote; a clear error names a missing part."""
        from safetensors.torch import load_file
        from transformers import CLIPTextModel, ResNetModel

        path = str(path)
        for part in (CONFIG_NAME, HEADS_NAME, "vision", "text"):
            if not os.path.exists(os.path.join(path, part)):
                raise FileNotFoundError(f"{path}: not a conv CLIP checkpoint ({part} is missing)")
        with open(os.path.join(path, CONFIG_NAME)) as f:
            geo = json.load(f)
        vision = ResNetModel.from_pretrained(os.path.join(path, "vision"))
        text = CLIPTextModel.from_pretrained(os.path.join(path, "text"))
        model = cls(vision.config, text.config, projection_dim=int(geo["projection_dim"]),
                    image_size=int(geo["image_size"]))
        model.vision_model.resnet.load_state_dict(vision.state_dict())
        model.text_model.load_state_dict(text.state_dict())
        heads = load_file(os.path.join(path, HEADS_NAME))
        with torch.no_grad():
            model.visual_projection.weight.copy_(heads["visual_projection.weight"])
            model.text_projection.weight.copy_(heads["text_projection.weight"])
            model.logit_scale.copy_(heads["logit_scale"][0])
        return model.to(dtype) if dtype is not None else model
