"""One interface over contrastive image-text models: a pretrained CLIP by name or path, or a world CLIP.

Both are transformers ``CLIPModel`` checkpoints (``save_pretrained`` layout with a tokenizer and an image
processor config beside the weights), so one loader serves the paper's ViT-B/32 and a CLIP trained from
scratch on the shapes world. Features come back L2-normalised; texts longer than the text encoder's limit
are truncated and the truncation is reported, never silent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
"""The paper's CLIP score model (ViT-B/32)."""


@dataclass
class TextFeatures:
    """Normalised text features ``(N, D)`` and, per text, whether it was cut at the encoder's limit."""

    features: Any  # torch.Tensor (N, D)
    truncated: list[bool]


class ClipEncoder:
    """A CLIPModel with its tokenizer and image processor; batched, normalised image and text features."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, name: str = "",
                 device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.name = name
        self.device = device

    @property
    def max_text_tokens(self) -> int:
        """The text encoder's context length (77 for OpenAI CLIP), special tokens included."""
        return int(self.model.config.text_config.max_position_embeddings)

    def encode_images(self, images: list[Any], batch_size: int = 64) -> Any:
        """``(N, D)`` L2-normalised image features of RGB PIL images."""
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                px = self.image_processor(images=images[i:i + batch_size], return_tensors="pt")["pixel_values"]
                f = self.model.get_image_features(pixel_values=px.to(self.device))
                f = getattr(f, "pooler_output", f)
                out.append(torch.nn.functional.normalize(f.float(), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.model.config.projection_dim)

    def encode_texts(self, texts: list[str], batch_size: int = 256) -> TextFeatures:
        """L2-normalised text features; texts over :attr:`max_text_tokens` are truncated and flagged."""
        import torch

        out, truncated = [], []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                chunk = list(texts[i:i + batch_size])
                full = self.tokenizer(chunk, truncation=False)["input_ids"]
                truncated += [len(ids) > self.max_text_tokens for ids in full]
                tok = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_text_tokens,
                                     return_tensors="pt")
                f = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                 attention_mask=tok["attention_mask"].to(self.device))
                f = getattr(f, "pooler_output", f)
                out.append(torch.nn.functional.normalize(f.float(), dim=-1))
        feats = torch.cat(out) if out else torch.zeros(0, self.model.config.projection_dim)
        return TextFeatures(feats, truncated)

    def save(self, path: str) -> None:
        """Write model, tokenizer and image processor in ``save_pretrained`` layout."""
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)


def load_clip(name_or_path: str = DEFAULT_CLIP, device: str = "cpu", dtype: str | None = None) -> ClipEncoder:
    """Load a CLIP by hub name or local path (pretrained OpenAI CLIP, or a world CLIP we saved, ViT or ResNet)."""
    import torch
    from transformers import AutoTokenizer, CLIPModel

    try:
        from transformers import CLIPImageProcessorPil as _Proc  # no torchvision needed
    except ImportError:  # older transformers
        from transformers import CLIPImageProcessor as _Proc

    from recaption.clip.conv import ConvClipModel, is_conv_clip

    kw = {"dtype": getattr(torch, dtype)} if dtype else {}
    try:
        if is_conv_clip(name_or_path):  # a world CLIP with a ResNet image tower (recaption.clip.conv)
            model = ConvClipModel.from_pretrained(name_or_path, **kw)
        else:
            model = CLIPModel.from_pretrained(name_or_path, **kw)
        tok = AutoTokenizer.from_pretrained(name_or_path)
        proc = _Proc.from_pretrained(name_or_path)
    except OSError as e:
        raise FileNotFoundError(f"cannot load CLIP {name_or_path!r}: not a local checkpoint and not "
                                f"reachable on the model hub ({e.__class__.__name__})") from e
    return ClipEncoder(model, tok, proc, name=name_or_path, device=device)
