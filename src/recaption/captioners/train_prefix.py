"""Training the clip-prefix captioner in the paper's three stages (Betker et al. 2023, section 2).

- ``alt``: language-model loss on (image, alt-text) over the whole dataset; reads ``record.captions["alt"]``
  and the image, nothing else (in particular never ``meta["world"]``, the world's truth). Its new tokenizer may
  also be given the later stages' fine-tune captions (``tokenizer_texts``; vocabulary only).
- ``short`` / ``descriptive``: fine-tune a previous stage (``init``) on a *small* set of (image, caption)
  pairs, the paper's hand-written sets: either a user-given JSONL file of ``{"key", "caption"}`` pairs
  (real data), or, in the shapes world, the true captions of a fixed seeded subset of exactly
  ``finetune_size`` records (default 5%) — the truth of every other record is never read.

With a frozen CLIP (the default) features are computed once per run and the loop trains mapper + LM only;
with ``finetune_vision`` the vision tower is tuned along (pixels are kept as uint8, 12 KB an image).
``recon_weight`` adds a self-supervised loss on the tuned tower (a small head redraws each image from its
feature map; pixels only, so no truth leaks), for what the captions never ask the tower to see.
``bow_weight`` adds a bag-of-words loss on the prefix: each stage's own captions ask the prefix tokens, read
through the LM's (frozen) word embeddings, to predict which words the caption uses (the best-matching token for
each word; multiple-instance, so no word is tied to a place). It hands the caption's attribute words straight to
the tower and mapper, one short path instead of through the whole LM, in a form the LM can copy. Measured in the
world at weight 1 it did the opposite (fill recall 0.21 -> 0.11; bench/RESULTS.md, "Hard negatives ..."): off by default.
``hflip`` draws each example mirrored left to right with that probability, its caption's direction words
swapped (``hflip_swap``, "left:right"), so a small fine-tune set shows each scene both ways; captions with a
quotation mark (text in the image, which a mirror garbles) are never mirrored. Measured in the world at 0.5 in one
18-minute descriptive stage it did worse (attribute recall 0.650 -> 0.577; bench/RESULTS.md, "A token per cell ..."):
off by default.
``shift`` moves each drawn image (tuned tower only) by a random whole number of pixels in ``[-shift, shift]`` along
each axis, edge pixels repeated into the gap (:func:`shift_images`): the caption still holds (objects stay in their
grid cells: a world object's centre lies at least 6 px inside its cell at 64 px; relations are relative; an object at
the image border may lose a few edge pixels), and the tower sees each texture at other phases relative to its
strided stem, against the overfitting of a small set.
``ema`` keeps an exponential moving average of the trained weights (mapper, LM and a tuned tower; decay
``min(ema, (1 + n) / (10 + n))`` after step n, so a short run is not held at its start): the checkpoint holds the
average, which is what captions, and ``train_state.pt`` the training weights, so a resumed run goes on exactly.
Checkpoints hold their config (inside and beside) and a ``train_state.pt`` (optimizer, step, RNG, the
reconstruction head): a run restarted with the same arguments resumes where it stopped.
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

from recaption.captioners.caption_file import read_captions
from recaption.optim import adamw
from recaption.records import Record, RecordError

log = logging.getLogger(__name__)

STATE_NAME = "train_state.pt"
RECON_NAME = "recon_head.safetensors"  # the reconstruction head of a recon_weight run, for the next stage
DEFAULT_STEPS = {"alt": 1000, "short": 500, "descriptive": 8000}
"""Steps per stage when none are given. Sized for 20 minutes a stage on 2 CPU cores from synthetic-batch step
times (alt 1.10 s, short 0.57 s, descriptive 1.09 s); the full-size world run measured 1.33 / 0.71 / 1.73 s a
step on real batches, i.e. 22 / 6 / 29 minutes (bench/RESULTS.md), and these steps do not reach the accuracy
targets either: the world CLIP's ViT tower reads colour but hardly shape, frozen or tuned. A ResNet tower
(``clip train --vision-arch resnet``) reads shape, colour and size but hardly fill; with ``prefix_pool=2`` and
``max_minutes`` every stage fits 20 minutes (bench/RESULTS.md, "A ResNet tower for the world CLIP"). Even a tower
that carries fill leaves the descriptive captions' fill at chance after ~500 descriptive steps: the language side
learns that binding last (bench/RESULTS.md, "A self-supervised reconstruction loss for fill"): teacher-forced on the
true caption, its next-word distribution over the fill words is the same whatever the image's fill (bench/RESULTS.md,
"A smaller language model ..."). It learns to read fill with more steps on the same captions: three 18-minute
descriptive cycles took fill recall from 0.21 to 0.44 and relations from 0.48 to 0.74 (bench/RESULTS.md, "Hard
negatives ..."), more than one 20-minute stage holds on 2 CPU cores. The descriptive default is 8,000 steps of 4
(:data:`DEFAULT_BATCH`), the same samples as the 1,000 steps of 32 it replaces (~16 minutes with the world bench's
128-wide LM and a token per cell, 0.12 s a step)."""
DEFAULT_LR = {"alt": 1e-3, "short": 3e-4, "descriptive": 1e-3}
"""Peak learning rates. Descriptive 1e-3, not 3e-4: from the same short checkpoint in the same 18 minutes, 1e-3
wrote better descriptive captions in fewer steps (attribute recall 0.472 vs 0.444, relation 0.444 vs 0.392;
bench/RESULTS.md, "A smaller language model ...")."""
DEFAULT_BATCH = {"alt": 64, "short": 32, "descriptive": 4}
"""Batch sizes. Descriptive 16, not 32: a CPU step costs about what its batch holds, so 16 gives twice the steps
on the same samples in the same minutes, and the step count is what the descriptive stage is short of: from the
same short checkpoint in 18 minutes, attribute recall 0.545 -> 0.551 and relation accuracy 0.479 -> 0.623 with a
4x4 token grid, 0.567 -> 0.650 and 0.571 -> 0.667 with a token per cell (bench/RESULTS.md, "A token per cell ...").
Descriptive 4, not 16 or 8: more, smaller steps again, until the step's fixed cost dominates (batch 2 is only 1.3x
cheaper a step than 4, and worse). With a token per cell, from one short checkpoint in 18 minutes, batch 4 beat
batch 8 on attribute recall, hallucination, count and relations for each of two seeds (recall 0.774 vs 0.705 and
0.649 vs 0.620; bench/RESULTS.md, "Batch 4 and seed noise"); one seed to the next moves these figures as much as
the batch does (three batch-4 runs: recall 0.643-0.774)."""


@dataclass(frozen=True)
class CaptionerTrainConfig:
    """One stage's training run; saved in the checkpoint's ``captioner.json`` under ``train``."""

    stage: str = "alt"
    steps: int = 0  # 0 = DEFAULT_STEPS[stage]
    batch_size: int = 0  # 0 = DEFAULT_BATCH[stage]
    lr: float = 0.0  # 0 = DEFAULT_LR[stage]
    warmup: int = 100
    weight_decay: float = 0.01
    finetune_size: str = "0.05"  # a fraction (<1, or with a '.') or a count of records
    seed: int = 0
    save_every: int = 500
    vision_lr_scale: float = 0.5  # LR of the CLIP vision tower relative to the mapper + LM (finetune_vision)
    max_minutes: float = 0.0  # > 0: a time box for this process's steps; the cosine follows steps or time
    recon_weight: float = 0.0  # > 0 (finetune_vision): weight of the self-supervised reconstruction loss
    recon_batch: int = 16  # images of each batch the reconstruction head decodes (its cost grows with them)
    bow_weight: float = 0.0  # > 0: weight of the bag-of-words loss on the prefix (see the module docstring)
    bow_max_df: float = 0.5  # words in more than this share of the stage's captions are not bag-of-words targets
    hflip: float = 0.0  # > 0: chance of drawing an example mirrored, its caption's direction words swapped
    hflip_swap: str = "left:right"  # word pairs a mirror swaps, comma-separated (case kept)
    freeze_vision: bool = False  # True: a tuned tower stays fixed from here on (features cached once)
    dropout: float | None = None  # set: the mapper's and LM's dropout from this stage on (else the model's)
    shift: int = 0  # > 0 (tuned tower): each drawn image moved by up to this many pixels each way, edges repeated
    ema: float = 0.0  # > 0: the checkpoint holds this decay's moving average of the weights (0: the last weights)
    self_train: bool = False  # short/descriptive: init (a checkpoint of this stage) captions the other records too
    self_train_max: int = 0  # > 0: at most this many other records (a seeded choice) get teacher captions
    self_train_views: int = 1  # test-time views of the teacher's captions (combined as features)
    self_train_view_shift: int = 2  # pixels each way those views move

    def __post_init__(self) -> None:
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"hflip must be a probability in [0, 1], got {self.hflip}")
        swap_pairs(self.hflip_swap)  # fails early on a malformed list
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.shift, int) or isinstance(self.shift, bool) or self.shift < 0:
            raise ValueError(f"shift must be a whole number of pixels >= 0, got {self.shift!r}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be a decay in [0, 1), got {self.ema}")
        if self.self_train and self.stage == "alt":
            raise ValueError("self_train applies to the fine-tune stages (short, descriptive): stage 1 already "
                             "reads every record's alt-text")
        if self.self_train_max < 0 or self.self_train_views < 1 or self.self_train_view_shift < 0:
            raise ValueError(f"self_train_max must be >= 0, self_train_views >= 1 and self_train_view_shift >= 0, "
                             f"got {self.self_train_max}, {self.self_train_views}, {self.self_train_view_shift}")

    def resolved(self) -> CaptionerTrainConfig:
        return dataclasses.replace(self, steps=self.steps or DEFAULT_STEPS[self.stage],
                                   lr=self.lr or DEFAULT_LR[self.stage],
                                   batch_size=self.batch_size or DEFAULT_BATCH[self.stage])


def swap_pairs(spec: str) -> list[tuple[str, str]]:
    """``"left:right,east:west"`` -> [("left", "right"), ("east", "west")]; refuses a malformed list."""
    pairs = []
    for item in filter(None, (x.strip() for x in spec.split(","))):
        a, sep, b = item.partition(":")
        if not sep or not a.strip().isalpha() or not b.strip().isalpha() or a.strip().lower() == b.strip().lower():
            raise ValueError(f"hflip_swap: {item!r} is not a pair of two different words 'a:b' (in {spec!r})")
        pairs.append((a.strip().lower(), b.strip().lower()))
    return pairs


def mirror_caption(text: str, pairs: list[tuple[str, str]]) -> str | None:
    """The caption of the mirrored image (each pair's words swapped as whole words, case kept), or None when it
    quotes text (a mirror garbles written text, so such an example is never mirrored)."""
    import re

    if any(q in text for q in "\"\u201c\u201d"):
        return None
    table = {a: b for a, b in pairs} | {b: a for a, b in pairs}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, table)) + r")\b", re.IGNORECASE) if table else None

    def repl(m: re.Match) -> str:
        w = m.group(0)
        out = table[w.lower()]
        return out.upper() if w.isupper() and len(w) > 1 else out.capitalize() if w[0].isupper() else out

    return pattern.sub(repl, text) if pattern else text


def shift_images(pixels: Any, offsets: Any) -> Any:
    """``(B, C, H, W)`` images moved by ``offsets`` ``(B, 2)`` whole pixels (dx right, dy down), each gap filled by
    repeating the edge row or column (the world's backgrounds are flat, so the gap looks like background)."""
    import torch

    B, _, H, W = pixels.shape
    if offsets.shape != (B, 2):
        raise ValueError(f"offsets must be ({B}, 2), got {tuple(offsets.shape)}")
    out = torch.empty_like(pixels)
    for i, (dx, dy) in enumerate(offsets.tolist()):
        ys = (torch.arange(H) - dy).clamp(0, H - 1)
        xs = (torch.arange(W) - dx).clamp(0, W - 1)
        out[i] = pixels[i][:, ys][:, :, xs]
    return out


def read_pairs(path: str) -> dict[str, str]:
    """A JSONL file of ``{"key": ..., "caption": ...}`` lines -> {key: caption}; refuses a file with none."""
    pairs = read_captions(path)
    if not pairs:
        raise RecordError(f"{path}: no caption pairs")
    return pairs


def select_examples(records: list[Record], stage: str, finetune_size: str | int | float = "0.05",
                    seed: int = 0, pairs: dict[str, str] | None = None) -> tuple[list[Record], list[str]]:
    """The (records, texts) a stage trains on; see the module docstring for what each stage may read."""
    from recaption.clip.data import caption_text, choose_subset, resolve_size

    if stage == "alt":
        return records, [caption_text(r, "alt") for r in records]
    if pairs is not None:
        chosen = [r for r in records if r.key in pairs]
        missing = set(pairs) - {r.key for r in chosen}
        if missing:
            raise RecordError(f"{len(missing)} caption pair keys are not in the dataset, e.g. {sorted(missing)[:3]}")
        return chosen, [pairs[r.key] for r in chosen]
    n = resolve_size(finetune_size, len(records))
    keys = set(choose_subset([r.key for r in records], n, seed))
    chosen = [r for r in records if r.key in keys]
    return chosen, [caption_text(r, f"truth.{stage}") for r in chosen]


def add_teacher_captions(records: list[Record], chosen: list[Record], texts: list[str], cfg: CaptionerTrainConfig,
                         teacher: str, out: str, device: str,
                         reuse: bool = True) -> tuple[list[Record], list[str], dict[str, Any]]:
    """Self-training (:mod:`recaption.captioners.self_train`): the records outside the fine-tune set
    (``cfg.self_train_max`` of them, a seeded choice, when > 0) captioned by ``teacher``, appended to the set."""
    from recaption.captioners.self_train import teacher_captions
    from recaption.clip.data import choose_subset

    true = {r.key for r in chosen}
    others = [r for r in records if r.key not in true]
    if cfg.self_train_max and cfg.self_train_max < len(others):
        pick = set(choose_subset([r.key for r in others], cfg.self_train_max, cfg.seed + 1))
        others = [r for r in others if r.key in pick]
    caps, stats = teacher_captions(teacher, others, cfg.stage, out, views=cfg.self_train_views,
                                   view_shift=cfg.self_train_view_shift, reuse=reuse, device=device)
    extra = [r for r in others if r.key in caps]
    log.info("self-training: %d true pairs + %d teacher captions (%s)", len(chosen), len(extra), stats)
    return chosen + extra, texts + [caps[r.key] for r in extra], stats


def finetune_texts(records: list[Record], stages: Iterable[str] = ("short", "descriptive"),
                   finetune_size: str | int | float = "0.05", seed: int = 0) -> list[str]:
    """The captions the later ``stages`` will fine-tune on, chosen exactly as they will choose them (same
    ``finetune_size`` and ``seed``): for ``train_captioner(tokenizer_texts=...)`` in the world, where the fine-tune
    sets are the true captions of seeded subsets. On real data, read the pairs files instead."""
    out: list[str] = []
    for st in stages:
        if st not in ("short", "descriptive"):
            raise ValueError(f"fine-tune stages are 'short' and 'descriptive', got {st!r}")
        out += select_examples(records, st, finetune_size, seed)[1]
    return out


def recon_head(dim: int, grid: int, size: int, width: int = 64) -> Any:
    """A small training-only decoder from the tower's feature map ``(B, dim, grid, grid)`` to the image.

    Why: alt-text almost never names a fill, so a tower tuned by the alt-text captioning loss learns what
    the words ask for (shape, colour, size) and not the stripes and dots (probes in bench/RESULTS.md). Asking the
    same features to redraw the image is a self-supervised signal from the pixels alone (no caption, no truth)
    that keeps whatever is visible in them. Measured in the world: it raised the tower's fill probe a little and
    the descriptive captions' fill not at all, because the LM, not the tower, is what misses fill there
    (bench/RESULTS.md), so it is off by default. Not part of the
    captioner: its weights live in the training state (a resumed run continues exactly) and beside the
    checkpoint as ``recon_head.safetensors``, which a later stage trained with ``recon_weight`` starts from (a
    fresh head would send noise into the tuned tower while it learns).
    """
    import torch

    layers: list[Any] = [torch.nn.Conv2d(dim, width, 3, padding=1), torch.nn.GELU()]
    ch, g = width, grid
    while g < size:
        out = max(16, ch // 2)
        layers += [torch.nn.Upsample(scale_factor=2, mode="nearest"), torch.nn.Conv2d(ch, out, 3, padding=1),
                   torch.nn.GELU()]
        ch, g = out, g * 2
    layers.append(torch.nn.Conv2d(ch, 3, 3, padding=1))
    if g != size:
        layers.append(torch.nn.Upsample(size=(size, size), mode="bilinear"))
    return torch.nn.Sequential(*layers)


class BowHead:
    """The bag-of-words loss's few parameters (a per-word bias and a logit scale) and its targets.

    Logits of word ``w`` at prefix token ``p``: ``scale * cos(prefix_p, E_w) + bias_w`` with ``E`` the LM's
    word embeddings (detached: the loss moves the prefix toward the words, not the words toward the prefix); a
    caption's logits are the max over its prefix tokens; the loss is the cross-entropy against the caption's
    words, spread evenly (Mahajan et al. 2018's multi-label softmax). Words in more than ``max_df`` of the
    stage's captions (template words: "there", "the") and the special tokens are no targets.
    """

    def __init__(self, ids: Any, lengths: Any, vocab: int, specials: Iterable[int | None], max_df: float,
                 device: str = "cpu") -> None:
        import torch

        self.vocab = vocab
        present = self.multi_hot(ids, lengths)
        self.skip = present.float().mean(0) > max_df
        for t in specials:
            if t is not None and 0 <= t < vocab:
                self.skip[t] = True
        self.bias = torch.nn.Parameter(torch.zeros(vocab, device=device))
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(10.0), device=device))

    def parameters(self) -> list[Any]:
        return [self.bias, self.log_scale]

    def multi_hot(self, ids: Any, lengths: Any) -> Any:
        """``(B, V)`` bool: which token ids each caption uses (padding past its length excluded)."""
        import torch

        valid = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
        out = torch.zeros(ids.shape[0], self.vocab, dtype=torch.bool)
        out.scatter_(1, ids.masked_fill(~valid, 0), valid)
        return out

    def loss(self, prefix: Any, embeddings: Any, ids: Any, lengths: Any) -> Any:
        import torch.nn.functional as F

        target = (self.multi_hot(ids, lengths) & ~self.skip).float().to(prefix.device)
        keep = target.sum(1) > 0
        if not bool(keep.any()):
            return prefix.sum() * 0.0
        target = target[keep] / target[keep].sum(1, keepdim=True)
        cos = F.normalize(prefix[keep].float(), dim=-1) @ F.normalize(embeddings.detach().float(), dim=-1).T
        logits = (self.log_scale.exp() * cos).amax(1) + self.bias  # (B, V): the best prefix token per word
        return -(target * logits.log_softmax(-1)).sum(1).mean()

    def state_dict(self) -> dict[str, Any]:
        return {"bias": self.bias.detach().clone(), "log_scale": self.log_scale.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bias.data.copy_(state["bias"])
        self.log_scale.data.copy_(state["log_scale"])


def recon_loss(rec: Any, pixels: Any) -> Any:
    """L1 + MSE of a reconstruction ``rec`` (in [-1, 1]) against ``uint8`` pixels, plus L1 of their finite
    differences, which weighs edges and texture (fills) as much as flat background."""
    import torch.nn.functional as F

    x = pixels.to(rec.device, rec.dtype) / 127.5 - 1.0
    loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
    for d in (-1, -2):
        loss = loss + F.l1_loss(rec.diff(dim=d), x.diff(dim=d))
    return loss


def _lr(step: int, cfg: CaptionerTrainConfig, spent: float = 0.0) -> float:
    """Warmup, then cosine to 10% over the steps, or over the time box when ``spent`` (its share used) is ahead."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, max((step - cfg.warmup) / max(1, cfg.steps - cfg.warmup), spent))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def tokenize_captions(tok: Any, texts: list[str], max_tokens: int) -> tuple[Any, Any]:
    """``BOS text EOS`` ids padded to the longest ``(N, T)`` and their lengths ``(N,)``."""
    import torch

    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    seqs = [[bos] + ids[:max_tokens] + [tok.eos_token_id]
            for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    lengths = torch.tensor([len(s) for s in seqs])
    ids = torch.full((len(seqs), int(lengths.max())), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    return ids, lengths


def build_captioner(texts: list[str], clip: str, model_cfg: Any, device: str = "cpu") -> Any:
    """A fresh clip-prefix captioner on ``clip``; tokenizer trained on ``texts`` unless ``model_cfg.lm``.

    ``texts`` may hold more than the stage's captions (see ``tokenizer_texts`` of :func:`train_captioner`)."""
    from transformers import AutoTokenizer

    from recaption.captioners.clip_prefix import (
        ClipPrefixCaptioner,
        ClipPrefixModel,
        build_lm,
        prefix_levels,
    )
    from recaption.clip import load_clip
    from recaption.clip.tokenizer import train_tokenizer

    encoder = load_clip(clip, device=device)
    if model_cfg.lm:
        tok = AutoTokenizer.from_pretrained(model_cfg.lm)
    else:
        tok = train_tokenizer(texts, vocab_size=model_cfg.vocab_size, add_special=False,
                              model_max_length=10**6)  # captions are cut at max_caption_tokens here
    n_pre, dims = prefix_levels(model_cfg, encoder)
    model = ClipPrefixModel(model_cfg, build_lm(model_cfg, tok, n_pre), dims, n_pre)
    cfg = dataclasses.replace(model_cfg, clip="clip" if os.path.isdir(clip) else clip)
    model.cfg = cfg
    return ClipPrefixCaptioner(cfg, model.to(device), tok, encoder)


def train_captioner(data: str | Iterable[Record], out: str, cfg: CaptionerTrainConfig, *, init: str | None = None,
                    clip: str | None = None, model_cfg: Any = None, pairs: str | dict[str, str] | None = None,
                    device: str = "cpu", resume: bool = True,
                    tokenizer_texts: Iterable[str] | None = None, add_layers: Iterable[int] = ()) -> dict[str, Any]:
    """Train one stage and save the checkpoint to ``out``; returns figures (loss, time, sizes).

    Stage ``alt`` starts from ``clip`` (a CLIP checkpoint; when none is given, a world CLIP is first trained
    on the same records' alt-text into ``out/alt_clip``) with ``model_cfg`` (a ClipPrefixConfig), or
    continues ``init``; stages ``short``/``descriptive`` fine-tune ``init``.

    ``tokenizer_texts``: more texts for a tokenizer trained from scratch (a new stage-1 model without
    ``model_cfg.lm``), typically the later stages' fine-tune captions (:func:`finetune_texts`). The tokenizer is
    fixed in stage 1; trained on alt-text alone it splits the descriptive vocabulary ("sits", "There") into
    pieces, which makes every descriptive sequence ~25% longer (bench/RESULTS.md). A pretrained LM's tokenizer
    knows those words already, which is what this stands in for. Only the vocabulary sees these texts.

    ``add_layers``: with ``init``, hidden states of the tower to add to the loaded model's prefix
    (``ClipPrefixConfig.extra_layers``; those it has already are kept); each new level's projection starts at zero,
    so the run starts exactly where ``init`` left off. A new stage-1 model takes them from ``model_cfg`` instead.
    """
    import torch

    from recaption.captioners.clip_prefix import (
        ClipPrefixConfig,
        clip_features,
        clip_geometry,
        load_clip_prefix,
        prefix_levels,
        vision_params,
        vision_tokens,
    )
    from recaption.clip.data import iter_records, load_pixels

    cfg = cfg.resolved()
    stage = cfg.stage
    torch.manual_seed(cfg.seed)  # model init; a resumed run restores the RNG state below
    if stage != "alt" and not init and not os.path.isfile(os.path.join(out, STATE_NAME)):
        raise ValueError(f"stage {stage!r} fine-tunes an earlier stage: give --init DIR (e.g. the alt checkpoint)")
    if isinstance(pairs, str):
        pairs = read_pairs(pairs)
    records = list(iter_records(data))
    if not records:
        raise RecordError(f"no records in {data!r}")
    chosen, texts = select_examples(records, stage, cfg.finetune_size, cfg.seed, pairs)
    true_keys = [r.key for r in chosen]  # the truth this stage reads (finetune_keys.json)
    log.info("captioner stage %s: %d of %d records", stage, len(chosen), len(records))

    state_path = os.path.join(out, STATE_NAME)
    state = torch.load(state_path, weights_only=False) if resume and os.path.isfile(state_path) else None
    self_stats = None
    if cfg.self_train:
        chosen, texts, self_stats = add_teacher_captions(records, chosen, texts, cfg, init or out, out, device,
                                                         reuse=resume)
    keys = [r.key for r in chosen]
    del records
    tokenizer_texts = list(tokenizer_texts or [])
    if tokenizer_texts and (stage != "alt" or init or (model_cfg is not None and model_cfg.lm)):
        raise ValueError("tokenizer_texts applies only where a tokenizer is trained: a new stage-1 (alt) model "
                         "without init and without a pretrained lm")
    if state is not None:
        if state["stage"] != stage:
            raise ValueError(f"{out!r} holds a {state['stage']!r} run; cannot resume it as {stage!r}")
        cap = load_clip_prefix(out, device=device)
        log.info("resuming %s from step %d", out, state["step"])
    elif init:
        cap = load_clip_prefix(init, device=device)
        cap.cfg = dataclasses.replace(cap.cfg, stage=stage)
        new = [int(x) for x in dict.fromkeys(add_layers) if int(x) not in cap.cfg.extra_layers]
        if new:
            cap.cfg = dataclasses.replace(cap.cfg, extra_layers=cap.cfg.extra_layers + tuple(new))
            cap.model.add_levels(prefix_levels(cap.cfg, cap.clip)[1][-len(new):])
            log.info("prefix levels added to %s: tower hidden states %s (zero-initialised)", init, new)
    else:
        if not clip:  # the paper's setting: a CLIP trained on this dataset's alt-text alone
            from recaption.clip.train import ClipTrainConfig, train_clip

            clip = os.path.join(out, "alt_clip")
            log.info("no --clip given: training a world CLIP on the alt-text into %s", clip)
            train_clip(chosen, clip, ClipTrainConfig(text_field="alt", seed=cfg.seed), device=device)
        cap = build_captioner(texts + tokenizer_texts, clip,
                              dataclasses.replace(model_cfg or ClipPrefixConfig(), stage=stage), device)
    if cfg.freeze_vision and cap.cfg.finetune_vision:  # the tower as init left it, its features cached once
        cap.cfg = dataclasses.replace(cap.cfg, finetune_vision=False)
        log.info("captioner stage %s: vision tower frozen (freeze_vision)", stage)
    tune = cap.cfg.finetune_vision
    if cfg.shift and not tune:
        raise ValueError("shift moves the images the tower sees: it needs a tuned vision tower (finetune_vision, "
                         "and no freeze_vision)")
    if tune:
        cap.cfg = dataclasses.replace(cap.cfg, clip="clip")  # the tuned tower lives in the checkpoint
    cap.model.cfg = cap.cfg
    if cfg.dropout is not None:
        cap.model.set_dropout(cfg.dropout)
        cap.cfg = cap.model.cfg
        log.info("captioner stage %s: dropout %g", stage, cfg.dropout)
    cap.version = f"{stage}-{cfg.seed}-{len(chosen)}"

    t0 = time.time()
    size, _, _ = clip_geometry(cap.clip)
    pixels = load_pixels(chosen, size)  # (N, 3, S, S) uint8
    # frozen CLIP: features once; tuned CLIP: pixels each step
    data_x = pixels if tune else clip_features(cap.clip, pixels, cap.cfg).half()  # (N, P, Dv)
    mirror = None  # (mirrorable (N,) bool, mirrored inputs, their ids, their lengths)
    if cfg.hflip > 0:
        swaps = swap_pairs(cfg.hflip_swap)
        mtexts = [mirror_caption(t, swaps) for t in texts]
        ok = torch.tensor([m is not None for m in mtexts])
        # one call for both, so that plain and mirrored ids share a width
        ids, lengths = tokenize_captions(cap.tokenizer, texts + [m or t for m, t in zip(mtexts, texts, strict=True)],
                                         cap.cfg.max_caption_tokens)
        n = len(texts)
        ids, m_ids, lengths, m_len = ids[:n], ids[n:], lengths[:n], lengths[n:]
        m_x = pixels.flip(-1) if tune else clip_features(cap.clip, pixels.flip(-1), cap.cfg).half()
        mirror = (ok, m_x, m_ids, m_len)
        log.info("hflip %.2f: %d of %d examples can be mirrored", cfg.hflip, int(ok.sum()), n)
    else:
        ids, lengths = tokenize_captions(cap.tokenizer, texts, cap.cfg.max_caption_tokens)
    prep_s = time.time() - t0
    del chosen, pixels

    model = cap.model.to(device).train()
    groups = [{"params": list(model.parameters()), "lr_scale": 1.0}]
    if tune:
        cap.clip.model.train()
        groups.append({"params": vision_params(cap.clip, cap.cfg), "lr_scale": cfg.vision_lr_scale})
    head = None
    if cfg.recon_weight > 0:
        if not tune or cap.cfg.prefix != "patch":
            raise ValueError("recon_weight needs a tuned vision tower (finetune_vision) and prefix='patch'")
        with torch.no_grad():
            _, fmap = vision_tokens(cap.clip, data_x[:1], cap.cfg, with_grid=True)
        head = recon_head(fmap.shape[1], fmap.shape[-1], size).to(device).train()
        if state is not None and "recon_head" in state:  # resumed: the head as it was at that step
            head.load_state_dict(state["recon_head"])
        elif init and os.path.isfile(os.path.join(init, RECON_NAME)):  # the earlier stage's head, trained
            from safetensors.torch import load_file

            head.load_state_dict(load_file(os.path.join(init, RECON_NAME)))
            log.info("reconstruction head from %s", init)
        groups.append({"params": list(head.parameters()), "lr_scale": 1.0})
    bow = None
    if cfg.bow_weight > 0:
        tk = cap.tokenizer
        bow = BowHead(ids, lengths, model.lm.get_input_embeddings().weight.shape[0],
                      (tk.bos_token_id, tk.eos_token_id, tk.pad_token_id), cfg.bow_max_df, device)
        if state is not None and "bow_head" in state:  # resumed: the head as it was at that step
            bow.load_state_dict(state["bow_head"])
        groups.append({"params": bow.parameters(), "lr_scale": 1.0, "weight_decay": 0.0})
    opt = adamw(groups, device, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
    averaged = groups[0]["params"] + (groups[1]["params"] if tune else [])  # mapper + LM (+ the tuned tower)
    # the average starts from the weights as loaded: init's, or, resumed, the average the checkpoint holds
    ema = [p.detach().clone() for p in averaged] if cfg.ema else None
    if state is not None and "training_weights" in state:  # an averaging run: its state holds the weights to go on
        with torch.no_grad():
            for p, w in zip(averaged, state["training_weights"], strict=True):
                p.copy_(w)

    def checkpoint(step: int, extra: dict) -> None:
        weights = None
        if ema is not None:  # the files hold the average (what captions); the state the weights training goes on with
            weights = [p.detach().clone() for p in averaged]
            with torch.no_grad():
                for p, e in zip(averaged, ema, strict=True):
                    p.copy_(e)
        try:
            cap.save(out, extra={"train": dataclasses.asdict(cfg), "n_examples": len(keys), **extra})
        finally:
            if weights is not None:
                with torch.no_grad():
                    for p, w in zip(averaged, weights, strict=True):
                        p.copy_(w)
        torch.save({"stage": stage, "step": step, "optimizer": opt.state_dict(), "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "train": dataclasses.asdict(cfg),
                    **({"training_weights": weights} if weights is not None else {}),
                    **({"recon_head": head.state_dict()} if head is not None else {}),
                    **({"bow_head": bow.state_dict()} if bow is not None else {})}, state_path + ".tmp")
        os.replace(state_path + ".tmp", state_path)
        if head is not None:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in head.state_dict().items()}, os.path.join(out, RECON_NAME))

    t1, losses, rec_losses, bow_losses, done = time.time(), [], [], [], start
    for step in range(start, cfg.steps):
        spent = (time.time() - t1) / (60 * cfg.max_minutes) if cfg.max_minutes else 0.0
        if spent >= 1.0:
            log.warning("captioner %s: max_minutes=%g reached: stopping at step %d of %d", stage, cfg.max_minutes,
                        step, cfg.steps)
            break
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg, spent) * g["lr_scale"]
        b = torch.randint(len(keys), (min(cfg.batch_size, len(keys)),), generator=gen)
        bx, b_ids, b_len = data_x[b], ids[b], lengths[b]
        if mirror is not None:  # drawn from the same generator, so a resumed run mirrors the same examples
            flip = (torch.rand(len(b), generator=gen) < cfg.hflip) & mirror[0][b]
            bx = torch.where(flip.view(-1, *[1] * (bx.dim() - 1)), mirror[1][b], bx)
            b_ids = torch.where(flip[:, None], mirror[2][b], b_ids)
            b_len = torch.where(flip, mirror[3][b], b_len)
        if cfg.shift:  # drawn from the same generator too: a resumed run moves the same examples the same way
            bx = shift_images(bx, torch.randint(-cfg.shift, cfg.shift + 1, (len(b), 2), generator=gen))
        L = int(b_len.max())
        if head is not None:  # the tower's map feeds the LM and, for the first recon_batch images, the head
            x, fmap = vision_tokens(cap.clip, bx, cap.cfg, with_grid=True)
            k = min(cfg.recon_batch, len(b))
            rec_loss = recon_loss(head(fmap[:k].float()), bx[:k])
            rec_losses.append(rec_loss.detach())
        else:
            x = vision_tokens(cap.clip, bx, cap.cfg) if tune else bx.to(device)
        loss, pre = model.loss(x, b_ids[:, :L].to(device), b_len.to(device), return_prefix=True)
        total = loss + cfg.recon_weight * rec_loss if head is not None else loss
        if bow is not None:
            bow_loss = bow.loss(pre, model.lm.get_input_embeddings().weight, b_ids[:, :L], b_len)
            bow_losses.append(bow_loss.detach())
            total = total + cfg.bow_weight * bow_loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        losses.append(loss.detach())
        done = step + 1
        if ema is not None:
            decay = min(cfg.ema, (1 + done) / (10 + done))
            with torch.no_grad():
                for e, p in zip(ema, averaged, strict=True):
                    e.lerp_(p.detach(), 1.0 - decay)
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            rec = f", reconstruction {float(torch.stack(rec_losses[-100:]).mean()):.4f}" if rec_losses else ""
            rec += f", bag of words {float(torch.stack(bow_losses[-100:]).mean()):.4f}" if bow_losses else ""
            log.info("captioner %s step %d/%d loss %.4f%s (%.1f s)", stage, step + 1, cfg.steps,
                     float(torch.stack(losses[-100:]).mean()), rec, time.time() - t1)
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            checkpoint(step + 1, {})
    metrics = {"stage": stage, "examples": len(keys), "steps": done, "resumed_from": start,
               "prep_seconds": round(prep_s, 1), "train_seconds": round(time.time() - t1, 1),
               "final_loss": float(torch.stack(losses[-50:]).mean()) if losses else None,
               **({"final_recon_loss": float(torch.stack(rec_losses[-50:]).mean())} if rec_losses else {}),
               **({"final_bow_loss": float(torch.stack(bow_losses[-50:]).mean())} if bow_losses else {}),
               **({"true_examples": len(true_keys), "self_train": self_stats} if self_stats else {})}
    model.eval()
    cap.clip.model.eval()
    checkpoint(done, {"metrics": metrics})
    with open(os.path.join(out, "finetune_keys.json" if stage != "alt" else "train_keys_count.json"), "w") as f:
        json.dump(true_keys if stage != "alt" else {"count": len(keys)}, f)
    return metrics
