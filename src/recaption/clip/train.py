"""Train a small transformers ``CLIPModel`` from scratch on a world dataset (``recaption clip train``).

The CLIP the captioner builds on learns from alt-text alone (``text_field="alt"``), as the paper's CLIP
learned from web alt-text; a *scoring* CLIP, a measuring instrument, may learn from the world's true
descriptive captions (``text_field="truth.descriptive"``). The model is the library's CLIPModel built
from a tiny config (ViT on 64 px images with 8 px patches, a small text transformer), its tokenizer a
byte-level BPE trained on the same texts, saved with a ``CLIPImageProcessor`` config so that
:func:`recaption.clip.load_clip` loads it like the public ViT-B/32. Objective: the symmetric InfoNCE loss
of Radford et al. (2021), as ``CLIPModel(return_loss=True)`` computes it; with ``hard_negatives`` each
caption's swapped-attribute copies (:mod:`recaption.clip.negatives`, NegCLIP) join the texts every image is
told apart from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from recaption.clip.data import (
    CLIP_MEAN,
    CLIP_STD,
    caption_text,
    iter_records,
    load_pixels,
    normalize,
    stable_fraction,
)
from recaption.optim import adamw
from recaption.records import Record

log = logging.getLogger(__name__)

CONFIG_NAME = "clip_train.json"
VISION_ARCHS = ("vit", "resnet")


@dataclass(frozen=True)
class ClipTrainConfig:
    """Everything a world-CLIP run depends on; saved beside the model as ``clip_train.json``."""

    text_field: str = "alt"
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 100
    image_size: int = 64
    vision_arch: str = "vit"  # "vit" (CLIPModel) or "resnet" (recaption.clip.conv: learns shapes far sooner)
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    text_width: int = 128
    text_layers: int = 3
    heads: int = 4
    projection_dim: int = 128
    vocab_size: int = 2048
    max_text_tokens: int = 77
    heldout: int = 500
    seed: int = 0
    max_minutes: float = 0.0  # > 0: a time box; the cosine then runs over steps or time, whichever ends first
    resnet_stem: int = 32  # vision_arch="resnet": stem width, stage widths and depths (two stages: 8x8 at 64 px)
    resnet_widths: tuple[int, ...] = (64, 128)
    resnet_depths: tuple[int, ...] = (2, 2)
    hard_negatives: str = ""  # "" none; "world" or a JSON file of word groups: NegCLIP's swapped-word negatives

    def __post_init__(self) -> None:
        if self.vision_arch not in VISION_ARCHS:
            raise ValueError(f"vision_arch must be one of {VISION_ARCHS}, got {self.vision_arch!r}")
        if len(self.resnet_widths) != len(self.resnet_depths):
            raise ValueError(f"resnet_widths {self.resnet_widths} and resnet_depths {self.resnet_depths} "
                             "must have one entry per stage")


def build_clip(cfg: ClipTrainConfig, tokenizer: Any) -> Any:
    """A randomly initialised CLIP of the configured (tiny) size, matched to ``tokenizer``.

    ``vision_arch="vit"``: the library's CLIPModel; ``"resnet"``: :class:`recaption.clip.conv.ConvClipModel`
    (a transformers ResNetModel image tower beside the same CLIP text tower).
    """
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, ResNetConfig

    text = dict(vocab_size=len(tokenizer), hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
                num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.heads,
                max_position_embeddings=cfg.max_text_tokens, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if cfg.vision_arch == "resnet":
        from recaption.clip.conv import ConvClipModel

        resnet = ResNetConfig(embedding_size=cfg.resnet_stem, hidden_sizes=list(cfg.resnet_widths),
                              depths=list(cfg.resnet_depths), layer_type="basic", downsample_in_first_stage=False)
        return ConvClipModel(resnet, CLIPTextConfig(**text), projection_dim=cfg.projection_dim,
                             image_size=cfg.image_size)
    vision = dict(hidden_size=cfg.vision_width, intermediate_size=4 * cfg.vision_width,
                  num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.heads,
                  image_size=cfg.image_size, patch_size=cfg.patch_size)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.projection_dim))


def image_processor(cfg: ClipTrainConfig) -> Any:
    """The processor config saved beside the model: what :func:`load_clip` applies at inference."""
    try:
        from transformers import CLIPImageProcessorPil as Proc
    except ImportError:  # older transformers
        from transformers import CLIPImageProcessor as Proc
    return Proc(size={"shortest_edge": cfg.image_size}, crop_size={"height": cfg.image_size, "width": cfg.image_size},
                image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def split_heldout(keys: list[str], n: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, heldout): the ``n`` keys with the smallest seeded hash are held out."""
    order = sorted(range(len(keys)), key=lambda i: stable_fraction(keys[i], seed + 7919))
    held = sorted(order[:n])
    hs = set(held)
    return [i for i in range(len(keys)) if i not in hs], held


def retrieval_accuracy(image_feats: Any, text_feats: Any, texts: list[str] | None = None) -> dict[str, float]:
    """Zero-shot retrieval among N pairs: image->text and text->image top-1 / top-5.

    With ``texts`` given, a retrieved text counts as correct when it equals the true text (many alt-texts
    repeat, e.g. "a red circle", and any copy of the right words is a right answer).
    """
    import torch

    sim = (image_feats @ text_feats.T).float().cpu()  # (N, N)
    n = sim.shape[0]
    if texts is not None:
        ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
        tid = torch.tensor([ids[t] for t in texts])
        same = tid[:, None] == tid[None, :]
    else:
        same = torch.eye(n, dtype=torch.bool)
    out = {}
    for name, s, ok in (("i2t", sim, same), ("t2i", sim.T, same.T)):
        for k in (1, 5):
            top = s.topk(min(k, n), dim=1).indices
            out[f"{name}_top{k}"] = float(ok.gather(1, top).any(dim=1).float().mean())
    out["n"] = n
    return out


def _lr(step: int, cfg: ClipTrainConfig, spent: float = 0.0) -> float:
    """Warmup, then cosine to 0 over the steps, or over the time box when ``spent`` (its share used) is ahead."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = max((step - cfg.warmup) / max(1, cfg.steps - cfg.warmup), spent)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def contrastive_loss(model: Any, ids: Any, mask: Any, pixels: Any, n_images: int) -> Any:
    """Symmetric InfoNCE over ``n_images`` (image, text) pairs; texts past ``n_images`` are extra negatives
    for the image-to-text side only (they have no image of their own)."""
    import torch
    import torch.nn.functional as F

    logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits_per_image  # (B, B + M)
    target = torch.arange(n_images, device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :n_images].T, target)) / 2


def train_clip(data: str | Iterable[Record], out: str, cfg: ClipTrainConfig = ClipTrainConfig(),
               device: str = "cpu") -> dict[str, Any]:
    """Train a world CLIP on ``data`` and save it to ``out``; returns held-out retrieval figures.

    Reads ``record.captions[cfg.text_field]`` (or the world truth for ``truth.*`` fields) and the image;
    nothing else of the record.
    """
    import torch

    from recaption.clip.model import ClipEncoder
    from recaption.clip.tokenizer import train_tokenizer

    torch.manual_seed(cfg.seed)
    negatives, n_neg = None, 0
    if cfg.hard_negatives:  # read the word groups before the data, so a bad file fails at once
        import random

        from recaption.clip.negatives import HardNegatives, load_word_groups

        negatives, neg_rng = HardNegatives(load_word_groups(cfg.hard_negatives)), random.Random(cfg.seed)
    records = list(iter_records(data))
    if len(records) < 2 * cfg.heldout + 2:
        cfg = dataclasses.replace(cfg, heldout=max(1, len(records) // 10))
    texts = [caption_text(r, cfg.text_field) for r in records]
    keys = [r.key for r in records]
    tr, held = split_heldout(keys, cfg.heldout, cfg.seed)
    log.info("world CLIP: %d train / %d held-out records, text field %r", len(tr), len(held), cfg.text_field)
    pixels = load_pixels(records, cfg.image_size)
    del records

    tok = train_tokenizer([texts[i] for i in tr], vocab_size=cfg.vocab_size, lowercase=True,
                          model_max_length=cfg.max_text_tokens)
    enc = tok(texts, padding="max_length", truncation=True, max_length=cfg.max_text_tokens, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    model = build_clip(cfg, tok).to(device).train()
    opt = adamw(model.parameters(), device, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(cfg.seed)
    tr_idx = torch.tensor(tr)
    t0, losses, done = time.time(), [], 0
    for step in range(cfg.steps):
        spent = (time.time() - t0) / (60 * cfg.max_minutes) if cfg.max_minutes else 0.0
        if spent >= 1.0:
            log.warning("clip: max_minutes=%g reached: stopping at step %d of %d", cfg.max_minutes, step, cfg.steps)
            break
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg, spent)
        b = tr_idx[torch.randint(len(tr_idx), (min(cfg.batch_size, len(tr_idx)),), generator=gen)]
        bi, bm = ids[b], mask[b]
        if negatives is not None:
            negs = [n for i in b.tolist() for n in negatives(texts[i], neg_rng)]
            n_neg += len(negs)
            if negs:
                ne = tok(negs, padding="max_length", truncation=True, max_length=cfg.max_text_tokens,
                         return_tensors="pt")
                bi, bm = torch.cat([bi, ne["input_ids"]]), torch.cat([bm, ne["attention_mask"]])
        L = int(bm.sum(1).max())  # trim padding to the batch's longest text
        loss = contrastive_loss(model, bi[:, :L].to(device), bm[:, :L].to(device),
                                normalize(pixels[b].to(device)), len(b))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.detach())
        done = step + 1
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            log.info("clip step %d/%d loss %.4f (%.1f s)", step + 1, cfg.steps,
                     float(torch.stack(losses[-100:]).mean()), time.time() - t0)
    train_s = time.time() - t0

    model.eval()
    encoder = ClipEncoder(model, tok, image_processor(cfg), name=out, device=device)
    os.makedirs(out, exist_ok=True)
    encoder.save(out)
    metrics = evaluate_retrieval(encoder, pixels[held], [texts[i] for i in held])
    if negatives is not None:
        metrics["hard_negatives_per_image"] = round(n_neg / max(1, done * min(cfg.batch_size, len(tr_idx))), 3)
    metrics.update(train_seconds=round(train_s, 1), steps=done,
                   final_loss=float(torch.stack(losses[-50:]).mean()) if losses else None)
    with open(os.path.join(out, CONFIG_NAME), "w") as f:
        json.dump({"config": dataclasses.asdict(cfg), "metrics": metrics}, f, indent=2)
    return metrics


def evaluate_retrieval(encoder: Any, pixels: Any, texts: list[str], batch_size: int = 256) -> dict[str, float]:
    """Held-out retrieval figures from ``uint8`` pixels and their texts (features as ``encode_*`` gives)."""
    import torch

    feats = []
    with torch.no_grad():
        for i in range(0, len(pixels), batch_size):
            f = encoder.model.get_image_features(pixel_values=normalize(pixels[i:i + batch_size].to(encoder.device)))
            f = getattr(f, "pooler_output", f)
            feats.append(torch.nn.functional.normalize(f.float(), dim=-1))
    img = torch.cat(feats)
    txt = encoder.encode_texts(texts).features
    return {**retrieval_accuracy(img, txt, texts),
            **{f"exact_{k}": v for k, v in retrieval_accuracy(img, txt).items() if k != "n"}}
