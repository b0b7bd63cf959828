"""Contrastive image-text models: a pretrained CLIP by name or path, or a small CLIP trained on the world."""

from recaption.clip.model import DEFAULT_CLIP, ClipEncoder, TextFeatures, load_clip

__all__ = ["DEFAULT_CLIP", "ClipEncoder", "TextFeatures", "load_clip"]
