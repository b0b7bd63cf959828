"""The clip-prefix captioner (ClipCap, Mokady et al. 2021): CLIP image tokens -> mapper -> causal LM.

The image goes through a CLIP vision tower; its token sequence is projected to the language model's
width, mixed by a small transformer mapper and fed to a transformers causal LM as a prefix of input
embeddings; the LM then writes the caption. The CLIP is frozen by default and its features are computed
once per training run (``finetune_vision`` tunes it along).

Pooled vs patch tokens: we feed the **patch tokens** (with the class token) of layer ``clip_layer``, not
the single pooled embedding. The pooled vector is trained to match alt-text, which rarely mentions
positions, counts or fills, so it keeps little of them; the patch tokens still carry *where* things are
(one token per image region) and *how many* there are (one region each), which descriptive captions must
state. LLaVA takes the penultimate layer for the same reason (``clip_layer=-2``, a ViT's default): the last
layer is the most specialised to the contrastive objective. A ResNet tower (``recaption.clip.conv``) gives
its last stage's feature map instead (default -1: 8x8 positions at 64 px, its spatial mean first). ``prefix_pool`` averages k x k patches to cut
the prefix length when the LM's cost matters more than fine detail; ``prefix_grid`` instead pools the map to a
fixed g x g grid of tokens (adaptive average pooling, as LLaVA-style pooled projectors do), whatever the tower's
resolution: with g equal to the layout of the images (the shapes world places things on a 3x3 grid of cells)
each token is one region a caption speaks of; ``prefix="pooled"`` gives ClipCap's original single-vector variant
for comparison. ``extra_layers`` adds earlier hidden states of the tower to each prefix token (a multi-level prefix,
as feature pyramids and LLaVA-style multi-layer projectors do): each level is pooled to the same token grid and
projected by its own zero-initialised projection onto the main level's token, so a checkpoint given more levels
starts exactly where it was and learns to use them. Why: a tower tuned on alt-text keeps fine texture (the world's
fills) better in its early, high-resolution stages than in the last one; added to the world's ResNet tower's first
stage, it lifted the descriptive captions' attribute recall for each of three seeds (mean 0.677 -> 0.773;
bench/RESULTS.md, "A multi-level prefix"). Off by default: not measured on a ViT tower.

One checkpoint is trained for one stage (``alt``, ``short`` or ``descriptive``), as the paper fine-tunes
separate captioners for SSC and DSC: a small fine-tune set teaches a style best when it is the only style
the model writes. ``caption(images, mode)`` must therefore match the stage (an ``alt`` checkpoint, the
baseline, answers any mode with alt-style text and says so in the provenance). A directory holding
``short/`` and ``descriptive/`` checkpoints loads as one captioner that routes each mode to its model
(:class:`ModeRouter`), which is what the recaption job uses.

Checkpoint layout (``save``): ``captioner.json`` (config beside), ``model.safetensors`` (mapper + LM, the
config again in its metadata), ``lm_config.json``, ``tokenizer/``, ``clip/`` (copied when local, else the
CLIP's hub name in the config), and ``train_state.pt`` while training (optimizer, step, RNG) for resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from recaption.captioners.base import CaptionerError, check_mode
from recaption.records import Provenance

log = logging.getLogger(__name__)

KIND = "clip-prefix"
CONFIG_NAME = "captioner.json"
WEIGHTS_NAME = "model.safetensors"
STAGES = ("alt", "short", "descriptive")


@dataclass(frozen=True)
class ClipPrefixConfig:
    """The architecture of a clip-prefix captioner; saved inside and beside every checkpoint.

    ``clip``: the CLIP checkpoint (``"clip"`` = the copy inside the checkpoint dir, else a name or path).
    ``lm``: a pretrained causal LM name or path, or ``""`` for a tiny GPT-2 from scratch of ``lm_*`` size.
    ``prefix_len``: 0 (default) gives the LM every image token (class + 64 patches at 64 px / patch 8); a
    resampler of K queries is cheaper for the LM but was a bottleneck in the world: with 8 queries a toy
    captioner named colours only (39% exact), with all tokens it was exact on 100% (bench/RESULTS.md).
    ``finetune_vision``: also train the CLIP vision tower (the paper allows the captioner to fine-tune its
    encoder); features are then computed each step and the tuned tower is saved in ``clip/``. Off by
    default: frozen features are cached once, which makes a stage several times cheaper.
    """

    clip: str = "clip"
    lm: str = ""
    stage: str = "alt"
    prefix: str = "patch"  # "patch" (class + patch tokens) or "pooled" (the projected image embedding)
    clip_layer: int | None = None  # None: the tower's default (a ViT's penultimate layer, a ResNet's last stage)
    prefix_pool: int = 1
    prefix_grid: int = 0  # > 0: pool the token map to this many tokens a side (instead of prefix_pool)
    prefix_len: int = 0  # 0 = every image token is a prefix token; K > 0 = a resampler of K learned queries
    mapper_layers: int = 1
    lm_width: int = 256
    lm_layers: int = 4
    lm_heads: int = 4
    dropout: float = 0.1
    vocab_size: int = 2048
    max_caption_tokens: int = 160
    finetune_vision: bool = False
    extra_layers: tuple[int, ...] = ()  # more hidden states of the tower, each added to the prefix tokens

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra_layers", tuple(int(x) for x in self.extra_layers))  # a JSON list -> tuple
        bad = [x for x in self.extra_layers if x < 0] or [x for x in set(self.extra_layers)
                                                          if self.extra_layers.count(x) > 1]
        if bad:  # counted from the input (0: the embeddings), so that no hidden state can be named twice
            raise ValueError(f"extra_layers {list(self.extra_layers)}: each must be a distinct hidden-state index "
                             f">= 0 (0 = the tower's embeddings); got {bad[0]}")
        if self.extra_layers and self.prefix != "patch":
            raise ValueError("extra_layers needs prefix='patch' (a pooled prefix has no token grid)")
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.prefix not in ("patch", "pooled"):
            raise ValueError(f"prefix must be 'patch' or 'pooled', got {self.prefix!r}")
        if self.prefix_grid < 0 or self.prefix_pool < 1:
            raise ValueError(f"prefix_grid must be >= 0 and prefix_pool >= 1, got {self.prefix_grid} and "
                             f"{self.prefix_pool}")
        if self.prefix_grid and self.prefix_pool > 1:
            raise ValueError("give prefix_grid or prefix_pool, not both")


@dataclass(frozen=True)
class DecodeConfig:
    """How captions are decoded: ``greedy``, ``beam`` (``num_beams``) or ``nucleus`` (``top_p``) sampling.

    ``no_repeat_ngram_size`` is the repetition guard: no n-gram of that length appears twice. Descriptive
    captions legitimately repeat short phrases ("is to the left of the"), so the default n is long enough
    to allow them and still cut degenerate loops. Sampling is deterministic for a given ``seed`` and batch.

    ``views`` > 1 is test-time augmentation: the image is also read moved by whole pixels (the first ``views``
    offsets of :func:`view_offsets`, at most ``view_shift`` each way, edges repeated as the training's
    ``shift`` does) and one caption is written from all readings: ``combine="probs"`` averages the views'
    next-token probabilities at every step (an ensemble over views; greedy or nucleus), ``"features"`` averages
    the mapper's inputs and decodes once (the tower runs ``views`` times, the LM once; ``probs`` runs the LM on
    ``views`` x ``batch_size`` sequences, so lower the batch with a large LM). Why: a texture of a few pixels'
    period (the world's fills) reads differently at each phase of the tower's strided stem, and several phases may
    outvote one. Measured in the world (bench/RESULTS.md, "Test-time views"): 25 views within 2 px, ``features``,
    raised descriptive attribute recall by 0.015 and 0.006 on two checkpoints at ~0.36x the captioning speed, and
    left the short captions unchanged: most misses are not phase noise.
    """

    strategy: str = "greedy"
    num_beams: int = 3
    top_p: float = 0.9
    temperature: float = 1.0
    max_new_tokens: int = 160
    no_repeat_ngram_size: int = 8
    batch_size: int = 64
    seed: int = 0
    views: int = 1
    view_shift: int = 1
    combine: str = "probs"

    def __post_init__(self) -> None:
        if not isinstance(self.views, int) or self.views < 1:
            raise ValueError(f"views must be a whole number >= 1, got {self.views!r}")
        if self.view_shift < 0 or self.views > (2 * self.view_shift + 1) ** 2:
            raise ValueError(f"views {self.views} needs view_shift >= 0 with at most (2 * view_shift + 1)^2 = "
                             f"{(2 * max(self.view_shift, 0) + 1) ** 2} distinct offsets")
        if self.combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {self.combine!r}")
        if self.views > 1 and self.combine == "probs" and self.strategy == "beam":
            raise ValueError("beam search reads one view; with views > 1 use greedy or nucleus, or combine='features'")


COMBINE = ("probs", "features")
"""How the views of ``DecodeConfig.views`` > 1 become one caption (see :class:`DecodeConfig`)."""


def view_offsets(n: int, radius: int = 1) -> list[tuple[int, int]]:
    """The first ``n`` whole-pixel offsets ``(dx, dy)`` within ``radius`` each way: the unmoved image first, then
    the nearest (the four one-pixel moves before the diagonals), in a fixed order."""
    offs = sorted(((dx, dy) for dx in range(-radius, radius + 1) for dy in range(-radius, radius + 1)),
                  key=lambda o: (o[0] ** 2 + o[1] ** 2, o))
    if not 1 <= n <= len(offs):
        raise ValueError(f"views: want 1..{len(offs)} offsets within {radius} px, got {n}")
    return offs[:n]


def banned_tokens(seq: Sequence[int], n: int) -> set[int]:
    """Tokens that would complete an ``n``-gram already in ``seq`` (the repetition guard of ``generate``'s
    ``no_repeat_ngram_size``, for the view-ensemble decoder); none when ``n`` <= 0."""
    if n <= 0 or len(seq) < n - 1:
        return set()
    tail = list(seq[len(seq) - n + 1:]) if n > 1 else []
    return {seq[i + n - 1] for i in range(len(seq) - n + 1)
            if (not tail or seq[i] == tail[0]) and list(seq[i:i + n - 1]) == tail}


STRATEGIES = {
    "greedy": lambda d: {"do_sample": False, "num_beams": 1},
    "beam": lambda d: {"do_sample": False, "num_beams": d.num_beams, "early_stopping": True},
    "nucleus": lambda d: {"do_sample": True, "top_p": d.top_p, "top_k": 0, "temperature": d.temperature},
}
"""Decoding strategy name -> ``generate`` keyword arguments (a registry, so new ones slot in)."""


class ClipPrefixModel(torch.nn.Module):
    """Mapper + causal LM; the CLIP vision tower stays outside (frozen, its features may be cached).

    Mapper: CLIP tokens -> LayerNorm + Linear to the LM width (+ learned positions), then either
    ``prefix_len`` learned queries that self-attend and cross-attend to all image tokens (a resampler, as
    Flamingo's Perceiver Resampler and BLIP-2's Q-Former; ClipCap's transformer mapper with its learned
    constants is the same idea), giving a short prefix whatever the patch count, or (``prefix_len=0``) a
    transformer encoder over the image tokens whose outputs are the prefix itself.

    ``vision_dim``: the width of the tower's tokens, or one width per level (the main level, then
    ``cfg.extra_layers``), whose features arrive concatenated; each extra level has its own projection, added.
    """

    def __init__(self, cfg: ClipPrefixConfig, lm: Any, vision_dim: int | Sequence[int], n_tokens: int) -> None:
        nn = torch.nn
        super().__init__()
        d = lm.config.hidden_size
        self.cfg = cfg
        dims = [int(vision_dim)] if isinstance(vision_dim, int) else [int(x) for x in vision_dim]
        self.level_dims = dims[:1]
        self.proj = nn.Sequential(nn.LayerNorm(dims[0]), nn.Linear(dims[0], d))
        self.levels = nn.ModuleList()
        self.add_levels(dims[1:], zero=False)
        self.pos = nn.Parameter(torch.randn(1, n_tokens, d) * 0.02)
        heads = max(1, d // 64)
        if cfg.prefix_len > 0:
            self.queries = nn.Parameter(torch.randn(1, cfg.prefix_len, d) * 0.02)
            layer = nn.TransformerDecoderLayer(d, heads, 4 * d, dropout=cfg.dropout, batch_first=True,
                                               norm_first=True)
            self.mapper = nn.TransformerDecoder(layer, max(1, cfg.mapper_layers))
        else:
            self.queries = None
            layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=cfg.dropout, batch_first=True,
                                               norm_first=True)
            self.mapper = nn.TransformerEncoder(layer, max(1, cfg.mapper_layers), enable_nested_tensor=False)
        self.lm = lm

    def add_levels(self, dims: Sequence[int], zero: bool = True) -> None:
        """One projection per new level of width ``dims[i]``; ``zero``: its output starts at zero, so the prefix
        (and everything the model writes) is unchanged until training moves it."""
        nn = torch.nn
        d = self.proj[1].out_features
        for dim in dims:
            lin = nn.Linear(int(dim), d)
            if zero:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
            self.levels.append(nn.Sequential(nn.LayerNorm(int(dim)), lin).to(self.proj[1].weight.device))
            self.level_dims.append(int(dim))

    def set_dropout(self, p: float) -> None:
        """Every dropout of the mapper and the LM to ``p`` (and the LM config's dropout fields, so it saves so)."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        for m in self.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = p
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "hidden_dropout", "dropout"):
            if isinstance(getattr(self.lm.config, name, None), float):
                setattr(self.lm.config, name, p)
        self.cfg = dataclasses.replace(self.cfg, dropout=p)

    def prefix(self, feats: Any) -> Any:
        """CLIP tokens ``(B, N, Dv)`` -> LM prefix embeddings ``(B, P, D)`` (P = prefix_len or N)."""
        feats = feats.float()
        if feats.shape[-1] != sum(self.level_dims):
            raise ValueError(f"image features are {feats.shape[-1]} wide; this model reads levels of widths "
                             f"{self.level_dims} (sum {sum(self.level_dims)})")
        parts = feats.split(self.level_dims, dim=-1)
        x = self.proj(parts[0]) + self.pos  # (B, N, D)
        for level, part in zip(self.levels, parts[1:], strict=True):
            x = x + level(part)
        if self.queries is None:
            return self.mapper(x)
        return self.mapper(self.queries.expand(x.shape[0], -1, -1), x)  # (B, K, D)

    def loss(self, feats: Any, ids: Any, lengths: Any, return_prefix: bool = False) -> Any:
        """LM loss on ``ids`` (``BOS caption EOS`` then padding) after the image prefix.

        Masked on the prefix, on the BOS (given, not predicted) and on padding past each ``length``.
        ``return_prefix``: also return the prefix embeddings ``(B, P, D)`` (for an auxiliary loss on them).
        """
        pre = self.prefix(feats)  # (B, P, D)
        B, P, _ = pre.shape
        T = ids.shape[1]
        emb = self.lm.get_input_embeddings()(ids)  # (B, T, D)
        valid = torch.arange(T, device=ids.device)[None, :] < lengths[:, None]  # (B, T)
        labels = ids.masked_fill(~valid, -100)
        labels[:, 0] = -100  # BOS is given
        labels = torch.cat([torch.full((B, P), -100, dtype=ids.dtype, device=ids.device), labels], dim=1)
        mask = torch.cat([torch.ones(B, P, dtype=torch.long, device=ids.device), valid.long()], dim=1)
        loss = self.lm(inputs_embeds=torch.cat([pre, emb], dim=1), attention_mask=mask, labels=labels).loss
        return (loss, pre) if return_prefix else loss


def nucleus_sample(probs: Any, top_p: float, gen: Any) -> Any:
    """One token per row of ``probs`` ``(B, vocab)``: drawn from the smallest set of most likely tokens whose
    probability reaches ``top_p`` (the most likely always kept), renormalised."""
    sp, si = probs.sort(dim=-1, descending=True)
    keep = (sp.cumsum(-1) - sp) < top_p
    keep[:, 0] = True
    sp = sp * keep
    pick = torch.multinomial(sp / sp.sum(-1, keepdim=True), 1, generator=gen)
    return si.gather(-1, pick).squeeze(-1)


# -- CLIP features --------------------------------------------------------------------------------------

def clip_geometry(encoder: Any) -> tuple[int, tuple, tuple]:
    """(input size, mean, std) of a CLIP's image processor, so training and inference prepare alike."""
    p = encoder.image_processor
    crop = getattr(p, "crop_size", None) or {}
    size = crop.get("height") if isinstance(crop, dict) else None
    size = size or encoder.model.config.vision_config.image_size
    return int(size), tuple(p.image_mean), tuple(p.image_std)


def feature_layer(cfg: ClipPrefixConfig, encoder: Any) -> int:
    """Which hidden state of the vision tower the prefix reads: ``cfg.clip_layer``, else the tower's default."""
    if cfg.clip_layer is not None:
        return cfg.clip_layer
    return getattr(encoder.model.vision_model, "default_feature_layer", -2)


def prefix_shape(cfg: ClipPrefixConfig, encoder: Any) -> tuple[int, int]:
    """``(P, Dv)`` of the mapper's input: P image tokens before any resampler (class/mean token + positions)
    of width Dv (all levels together), read off one blank image for patch prefixes (any tower, any geometry)."""
    n, dims = prefix_levels(cfg, encoder)
    return n, sum(dims)


def prefix_levels(cfg: ClipPrefixConfig, encoder: Any) -> tuple[int, list[int]]:
    """``(P, [Dv per level])``: the prefix's token count and the width of each level (main, then extra_layers)."""
    if cfg.prefix == "pooled":
        return 1, [int(encoder.model.config.projection_dim)]
    size = clip_geometry(encoder)[0]
    with torch.no_grad():
        levels = vision_levels(encoder, torch.zeros(1, 3, size, size, dtype=torch.uint8), cfg)
    return int(levels[0].shape[1]), [int(h.shape[2]) for h in levels]


def n_image_tokens(cfg: ClipPrefixConfig, encoder: Any) -> int:
    """How many prefix tokens the image gives before any resampler (class/mean token + positions)."""
    return prefix_shape(cfg, encoder)[0]


def vision_tokens(encoder: Any, pixels: Any, cfg: ClipPrefixConfig, with_grid: bool = False) -> Any:
    """``uint8 (B,3,S,S)`` pixels -> the mapper's input ``(B, P, Dv)``; differentiable (see ``finetune_vision``).

    With ``cfg.extra_layers`` the levels' tokens come concatenated along the width (main level first).
    ``with_grid``: also return the feature layer's positions as a map ``(B, Dv, s, s)`` before any pooling
    (what the training-time reconstruction head reads; ``prefix="patch"`` only; the main level's).
    """
    out = vision_levels(encoder, pixels, cfg, with_grid)
    levels = out[0] if with_grid else out
    h = levels[0] if len(levels) == 1 else torch.cat(levels, dim=-1)
    return (h, out[1]) if with_grid else h


def token_map(h: Any) -> tuple[Any, Any]:
    """Tokens ``(B, 1 + s*s, D)`` -> (the class/mean token ``(B, 1, D)``, the positions as a map ``(B, D, s, s)``)."""
    cls, grid = h[:, :1], h[:, 1:]
    B, N, D = grid.shape
    s = int(round(N ** 0.5))
    if s * s != N:
        raise ValueError(f"the tower's {N} position tokens are not a square map")
    return cls, grid.transpose(1, 2).reshape(B, D, s, s)


def vision_levels(encoder: Any, pixels: Any, cfg: ClipPrefixConfig, with_grid: bool = False) -> Any:
    """The prefix's tokens per level: ``[(B, P, Dv_main), (B, P, Dv_extra)...]`` (see :func:`vision_tokens`).

    The main level is pooled as the config says (``prefix_grid`` or ``prefix_pool``); each extra level is pooled
    to the main level's final grid (adaptive average pooling), so token i of every level covers the same region.
    """
    from recaption.clip.data import normalize

    _, mean, std = clip_geometry(encoder)
    model = encoder.model
    px = normalize(pixels.to(encoder.device), mean, std).to(model.dtype)
    if cfg.prefix == "pooled":
        if with_grid:
            raise ValueError("with_grid needs prefix='patch' (a pooled prefix has no positions)")
        f = model.get_image_features(pixel_values=px)
        return [getattr(f, "pooler_output", f)[:, None, :]]
    hidden = model.vision_model(pixel_values=px, output_hidden_states=True).hidden_states
    h = hidden[feature_layer(cfg, encoder)]
    cls, fmap = token_map(h)
    s = fmap.shape[-1]
    if cfg.prefix_grid and cfg.prefix_grid > s:
        raise ValueError(f"prefix_grid {cfg.prefix_grid} is finer than the tower's {s}x{s} token map")
    f = torch.nn.functional
    grid = fmap  # the main level's positions as the prefix has them
    if cfg.prefix_grid or cfg.prefix_pool > 1:
        grid = f.adaptive_avg_pool2d(fmap, cfg.prefix_grid) if cfg.prefix_grid else f.avg_pool2d(fmap, cfg.prefix_pool)
        h = torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)
    side = grid.shape[-1]
    levels = [h]
    for layer in cfg.extra_layers:
        if not 0 <= layer < len(hidden):
            raise ValueError(f"extra_layers: the tower has {len(hidden)} hidden states, no layer {layer}")
        e_cls, e_map = token_map(hidden[layer])
        if e_map.shape[-1] < side:
            raise ValueError(f"extra_layers: layer {layer}'s {e_map.shape[-1]}x{e_map.shape[-1]} map is coarser "
                             f"than the prefix's {side}x{side} grid")
        levels.append(torch.cat([e_cls, f.adaptive_avg_pool2d(e_map, side).flatten(2).transpose(1, 2)], dim=1))
    return (levels, fmap) if with_grid else levels


def clip_features(encoder: Any, pixels: Any, cfg: ClipPrefixConfig, batch_size: int = 256) -> Any:
    """``uint8 (N,3,S,S)`` pixels -> the mapper's input ``(N, P, Dv)`` (fp32, on CPU), without gradients."""
    out = []
    with torch.no_grad():
        for i in range(0, len(pixels), batch_size):
            out.append(vision_tokens(encoder, pixels[i:i + batch_size], cfg).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def view_features(encoder: Any, pixels: Any, cfg: ClipPrefixConfig, offsets: Sequence[tuple[int, int]],
                  batch_size: int = 256) -> Any:
    """``uint8 (N,3,S,S)`` pixels read once per whole-pixel ``offsets`` entry -> ``(N, V, P, Dv)`` (see
    ``DecodeConfig.views``); an offset of ``(0, 0)`` is the image as it is."""
    from recaption.captioners.train_prefix import shift_images

    views = []
    for o in offsets:
        px = pixels if tuple(o) == (0, 0) else shift_images(pixels, torch.tensor([list(o)] * len(pixels)))
        views.append(clip_features(encoder, px, cfg, batch_size))
    return torch.stack(views, dim=1)


def vision_params(encoder: Any, cfg: ClipPrefixConfig) -> list[Any]:
    """The CLIP parameters a ``finetune_vision`` run trains (the vision tower, + projection if pooled)."""
    m = encoder.model
    return list(m.vision_model.parameters()) + (list(m.visual_projection.parameters())
                                                if cfg.prefix == "pooled" else [])


def vision_dim(cfg: ClipPrefixConfig, encoder: Any) -> int:
    """The width of the mapper's input (all levels together)."""
    return prefix_shape(cfg, encoder)[1]


# -- building, saving, loading ----------------------------------------------------------------------------

def build_lm(cfg: ClipPrefixConfig, tokenizer: Any, n_image: int) -> Any:
    """A pretrained causal LM (``cfg.lm``) or a tiny GPT-2 from scratch sized for prefix + caption."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    if cfg.lm:
        return AutoModelForCausalLM.from_pretrained(cfg.lm)
    conf = GPT2Config(vocab_size=len(tokenizer), n_positions=(cfg.prefix_len or n_image) + cfg.max_caption_tokens + 2,
                      n_embd=cfg.lm_width, n_layer=cfg.lm_layers, n_head=cfg.lm_heads,
                      resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(conf)


def config_hash(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


class ClipPrefixCaptioner:
    """A trained clip-prefix checkpoint behind the :class:`~recaption.captioners.base.Captioner` protocol."""

    name = KIND

    def __init__(self, cfg: ClipPrefixConfig, model: ClipPrefixModel, tokenizer: Any, clip: Any,
                 decode: DecodeConfig = DecodeConfig(), path: str = "", meta: dict | None = None) -> None:
        self.cfg, self.model, self.tokenizer, self.clip = cfg, model, tokenizer, clip
        self.decode = decode
        self.path = path
        self.meta = dict(meta or {})
        self.version = self.meta.get("version") or f"{cfg.stage}-{config_hash(dataclasses.asdict(cfg))}"
        self.device = clip.device

    @property
    def stage(self) -> str:
        return self.cfg.stage

    def provenance(self, mode: str) -> Provenance:
        return Provenance.now(self.name, self.version, mode, None, stage=self.stage, path=self.path,
                              decode=dataclasses.asdict(self.decode))

    def check_mode(self, mode: str) -> None:
        """Raise :class:`CaptionerError` unless this checkpoint writes ``mode`` captions (jobs check up front)."""
        check_mode(mode)
        if self.stage != "alt" and mode != self.stage:
            raise CaptionerError(f"clip-prefix checkpoint {self.path or '?'} was fine-tuned for {self.stage!r} "
                                 f"captions, not {mode!r}; load the {mode!r} checkpoint or a directory "
                                 f"holding short/ and descriptive/")

    def caption(self, images: list[Any], mode: str, decode: DecodeConfig | None = None) -> list[str]:
        """One caption per RGB PIL image, decoded as ``decode`` (default: this captioner's)."""
        import numpy as np

        from recaption.clip.data import to_pixels

        self.check_mode(mode)
        if not images:
            return []
        d = decode or self.decode
        size, _, _ = clip_geometry(self.clip)
        pixels = torch.from_numpy(np.stack([to_pixels(im, size) for im in images]))
        if d.views > 1:
            feats = view_features(self.clip, pixels, self.cfg, view_offsets(d.views, d.view_shift))
        else:
            feats = clip_features(self.clip, pixels, self.cfg)
        return self.caption_features(feats, d)

    def caption_features(self, feats: Any, decode: DecodeConfig | None = None) -> list[str]:
        """Captions from precomputed mapper inputs ``(N, P, Dv)`` (see :func:`clip_features`), or ``(N, V, P, Dv)``
        with several views of each image (:func:`view_features`), combined as ``decode.combine`` says."""
        ids = self.generate_ids(feats, decode)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def bos_pad(self) -> tuple[int, int]:
        """The ids a caption starts from and is padded with (the EOS where the tokenizer has none)."""
        tok = self.tokenizer
        return (tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
                tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    def generate_ids(self, feats: Any, decode: DecodeConfig | None = None) -> list[list[int]]:
        """Generated token ids per image (EOS and padding removed); ``feats`` as :meth:`caption_features` takes."""
        d = decode or self.decode
        if d.strategy not in STRATEGIES:
            raise ValueError(f"decoding strategy must be one of {sorted(STRATEGIES)}, got {d.strategy!r}")
        if feats.dim() == 4:  # (N, V, P, Dv): several views of each image
            if feats.shape[1] == 1 or d.combine == "features":
                feats = feats.mean(dim=1)
            else:
                return self.generate_ids_views(feats, d)
        self.model.eval()
        tok, lm = self.tokenizer, self.model.lm
        bos, pad = self.bos_pad()
        out: list[list[int]] = []
        with torch.no_grad(), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*no_repeat_ngram_size.*")
            for bi, i in enumerate(range(0, len(feats), d.batch_size)):
                torch.manual_seed(d.seed + bi)
                pre = self.model.prefix(feats[i:i + d.batch_size].to(self.device))  # (B, P, D)
                B = pre.shape[0]
                b = lm.get_input_embeddings()(torch.full((B, 1), bos, device=self.device))
                emb = torch.cat([pre, b], dim=1)
                gen = lm.generate(inputs_embeds=emb, attention_mask=torch.ones(emb.shape[:2], dtype=torch.long,
                                                                             device=self.device),
                                  max_new_tokens=d.max_new_tokens, eos_token_id=tok.eos_token_id, pad_token_id=pad,
                                  no_repeat_ngram_size=d.no_repeat_ngram_size or None, **STRATEGIES[d.strategy](d))
                for row in gen.tolist():
                    if tok.eos_token_id in row:
                        row = row[:row.index(tok.eos_token_id)]
                    out.append(row)
        return out

    def generate_ids_views(self, feats: Any, d: DecodeConfig) -> list[list[int]]:
        """One caption per image from ``feats`` ``(N, V, P, Dv)``: at each step the next token is read from the mean
        of the V views' next-token probabilities (greedy: the most likely; nucleus: sampled as ``generate``
        samples, top-p after temperature). The repetition guard is :func:`banned_tokens`'s. All views of an image
        are fed the same tokens, so one KV cache per view carries the caption."""
        if d.strategy == "beam":
            raise ValueError("beam search reads one view; with views > 1 use greedy or nucleus, or "
                             "combine='features'")
        self.model.eval()
        tok, lm = self.tokenizer, self.model.lm
        bos, pad = self.bos_pad()
        eos = tok.eos_token_id
        # transformers renamed the KV cache argument (past_key_values -> cache, 5.2x); take the model's name for it
        cache_kw = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
        out: list[list[int]] = []
        with torch.no_grad():
            for bi, i in enumerate(range(0, len(feats), d.batch_size)):
                gen = torch.Generator().manual_seed(d.seed + bi)
                f = feats[i:i + d.batch_size].to(self.device)
                B, V = f.shape[:2]
                pre = self.model.prefix(f.flatten(0, 1))  # (B*V, P, D)
                b = lm.get_input_embeddings()(torch.full((B * V, 1), bos, device=self.device))
                emb = torch.cat([pre, b], dim=1)
                mask = torch.ones(emb.shape[:2], dtype=torch.long, device=self.device)
                res = lm(inputs_embeds=emb, attention_mask=mask, use_cache=True)
                seqs: list[list[int]] = [[] for _ in range(B)]
                done = [False] * B
                for _ in range(d.max_new_tokens):
                    logits = res.logits[:, -1].float()
                    if d.strategy == "nucleus":
                        logits = logits / d.temperature
                    probs = logits.softmax(-1).view(B, V, -1).mean(dim=1).cpu()  # (B, vocab)
                    for r in range(B):
                        ban = banned_tokens(seqs[r], d.no_repeat_ngram_size) if not done[r] else ()
                        if ban:
                            probs[r, list(ban)] = 0.0
                    if d.strategy == "nucleus":
                        nxt = nucleus_sample(probs, d.top_p, gen)
                    else:
                        nxt = probs.argmax(dim=-1)
                    for r, t in enumerate(nxt.tolist()):
                        if not done[r]:
                            seqs[r].append(t)
                            done[r] = t == eos
                    if all(done):
                        break
                    ids = torch.tensor([pad if done[r] else seqs[r][-1] for r in range(B)], device=self.device)
                    mask = torch.cat([mask, mask.new_ones(B * V, 1)], dim=1)
                    res = lm(input_ids=ids.repeat_interleave(V)[:, None], attention_mask=mask, use_cache=True,
                             **{cache_kw: res["cache"] if "cache" in res else res.past_key_values})
                out += [s[:s.index(eos)] if eos in s else s for s in seqs]
        return out

    def save(self, path: str, extra: dict | None = None) -> None:
        """Write the checkpoint (see the module docstring for the layout)."""
        from safetensors.torch import save_model

        os.makedirs(path, exist_ok=True)
        cfg_dict = dataclasses.asdict(self.cfg)
        meta = {"kind": KIND, "model": cfg_dict, "version": self.version, **(extra or {})}
        with open(os.path.join(path, CONFIG_NAME), "w") as f:
            json.dump(meta, f, indent=2, default=str)
        save_model(self.model, os.path.join(path, WEIGHTS_NAME), metadata={"captioner": json.dumps(cfg_dict)})
        self.model.lm.config.to_json_file(os.path.join(path, "lm_config.json"))
        self.tokenizer.save_pretrained(os.path.join(path, "tokenizer"))
        clip_dir = os.path.join(path, "clip")
        if self.cfg.clip == "clip" and self.cfg.finetune_vision:
            self.clip.save(clip_dir)  # the tuned tower
            self.clip.name = clip_dir
        elif self.cfg.clip == "clip" and os.path.abspath(self.clip.name) != os.path.abspath(clip_dir):
            if os.path.isdir(self.clip.name):
                shutil.copytree(self.clip.name, clip_dir, dirs_exist_ok=True)
            else:
                self.clip.save(clip_dir)
            self.clip.name = clip_dir


def resolve_clip_path(cfg: ClipPrefixConfig, ckpt: str) -> str:
    return os.path.join(ckpt, "clip") if cfg.clip == "clip" else cfg.clip


def read_config(path: str) -> dict:
    """The ``captioner.json`` of a checkpoint directory (FileNotFoundError naming it when absent)."""
    p = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{path!r} is not a clip-prefix checkpoint (no {CONFIG_NAME})")
    with open(p) as f:
        return json.load(f)


def load_clip_prefix(path: str, device: str = "cpu", dtype: str | None = None,
                     decode: DecodeConfig | None = None) -> ClipPrefixCaptioner:
    """Load a checkpoint written by :meth:`ClipPrefixCaptioner.save`."""
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from recaption.clip import load_clip

    meta = read_config(path)
    cfg = ClipPrefixConfig(**meta["model"])
    clip = load_clip(resolve_clip_path(cfg, path), device=device, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(os.path.join(path, "tokenizer"))
    lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(os.path.join(path, "lm_config.json")))
    n_pre, dims = prefix_levels(cfg, clip)
    model = ClipPrefixModel(cfg, lm, dims, n_pre)
    load_model(model, os.path.join(path, WEIGHTS_NAME), device=device)
    model.to(device).eval()
    return ClipPrefixCaptioner(cfg, model, tok, clip, decode or DecodeConfig(), path=path, meta=meta)


class ModeRouter:
    """One captioner over per-mode checkpoints: ``caption(images, mode)`` goes to ``captioners[mode]``."""

    name = KIND

    def __init__(self, captioners: dict[str, Any]) -> None:
        if not captioners:
            raise ValueError("ModeRouter needs at least one mode")
        self.captioners = dict(captioners)
        self.version = "+".join(f"{m}:{c.version}" for m, c in sorted(self.captioners.items()))

    def check_mode(self, mode: str) -> None:
        """Raise :class:`CaptionerError` unless a checkpoint here writes ``mode`` captions."""
        check_mode(mode)
        if mode not in self.captioners:
            raise CaptionerError(f"no {mode!r} checkpoint here (have: {', '.join(sorted(self.captioners))})")
        self.captioners[mode].check_mode(mode)

    def caption(self, images: list[Any], mode: str) -> list[str]:
        self.check_mode(mode)
        return self.captioners[mode].caption(images, mode)

    def provenance(self, mode: str) -> Provenance:
        check_mode(mode)
        return self.captioners[mode].provenance(mode)


def set_decode(captioner: Any, **fields: Any) -> Any:
    """Set ``DecodeConfig`` fields (e.g. ``views=5``) on a clip-prefix captioner or each model of its
    :class:`ModeRouter`; returns ``captioner``. Other captioners have no such decoder: asking one for test-time
    views is a ValueError naming it (the other fields are left to its own options)."""
    models = [c for c in getattr(captioner, "captioners", {"": captioner}).values() if hasattr(c, "decode")]
    if not models:
        if fields.get("views", 1) != 1:  # (the other view fields mean nothing without views)
            raise ValueError(f"views {fields['views']}: only clip-prefix checkpoints read several views, not "
                             f"{getattr(captioner, 'name', type(captioner).__name__)!r}")
        return captioner
    for c in models:
        c.decode = dataclasses.replace(c.decode, **fields)
    return captioner


def load_clip_prefix_dir(path: str, device: str = "cpu", dtype: str | None = None) -> Any:
    """A checkpoint dir, or a dir with ``short/`` and/or ``descriptive/`` checkpoints (-> ModeRouter)."""
    if os.path.isfile(os.path.join(path, CONFIG_NAME)):
        return load_clip_prefix(path, device, dtype)
    subs = {m: os.path.join(path, m) for m in ("short", "descriptive")
            if os.path.isfile(os.path.join(path, m, CONFIG_NAME))}
    if not subs:
        raise FileNotFoundError(f"{path!r} holds no clip-prefix checkpoint ({CONFIG_NAME}, or short/ and "
                                f"descriptive/ sub-directories with one)")
    return ModeRouter({m: load_clip_prefix(p, device, dtype) for m, p in subs.items()})
