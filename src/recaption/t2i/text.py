"""The text encoder: a transformers T5 encoder and its tokenizer (the paper conditions on T5-XXL).

Real use loads a pretrained T5 by name or path and keeps it frozen. The shapes world builds a small T5
from a :class:`~recaption.t2i.config.TextEncoderConfig`, with a BPE tokenizer trained by ``tokenizers`` on
the dataset's captions, and either pretrains it on those captions with T5's span-corruption objective
(Raffel et al., 2020, section 3.1.4) and then freezes it, or trains it jointly with the U-Net.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recaption.optim import adamw
from recaption.t2i.config import TextEncoderConfig

log = logging.getLogger(__name__)

N_SENTINELS = 100
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"] + [f"<extra_id_{i}>" for i in range(N_SENTINELS)]


def train_tokenizer(captions: Iterable[str], vocab_size: int):
    """A T5-style BPE tokenizer (``<pad>``=0, ``</s>``=1, ``<unk>``=2, 100 sentinels) trained on ``captions``.

    Returned as a transformers fast tokenizer, so ``save_pretrained`` / ``AutoTokenizer`` round-trip it.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=max(vocab_size, len(SPECIAL_TOKENS) + 64),
                                  special_tokens=SPECIAL_TOKENS, min_frequency=2, show_progress=False)
    tok.train_from_iterator((c for c in captions if c), trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   extra_special_tokens=SPECIAL_TOKENS[3:], model_max_length=512)


def t5_config(cfg: TextEncoderConfig, vocab_size: int, decoder_layers: int | None = None):
    """The transformers T5Config of a from-scratch size (pad 0, eos 1, decoder start = pad, as in T5)."""
    from transformers import T5Config

    return T5Config(vocab_size=vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
                    num_layers=cfg.num_layers, num_decoder_layers=decoder_layers or cfg.num_layers,
                    num_heads=cfg.num_heads, dropout_rate=cfg.dropout_rate, feed_forward_proj="gated-gelu",
                    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=True)


class TextEncoder(nn.Module):
    """Tokenizer + T5 encoder: ``encode(texts)`` -> token embeddings (B, L, D) and attention mask (B, L)."""

    def __init__(self, tokenizer, model, max_length: int = 77):
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model
        self.max_length = int(max_length)
        self.calls = 0  # sequences encoded so far (tests check that the cache keeps this down)

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask (B, L), padded to the longest, truncated to ``max_length`` (with a warning)."""
        enc = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_length,
                             return_tensors="pt", return_overflowing_tokens=False)
        full = enc["attention_mask"].sum(1) >= self.max_length
        if bool(full.any()):
            log.debug("%d of %d captions reach the %d-token limit (may be truncated)", int(full.sum()),
                      len(texts), self.max_length)
        return enc["input_ids"], enc["attention_mask"]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, D) last hidden states."""
        self.calls += int(input_ids.shape[0])
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @torch.no_grad()
    def encode(self, texts: Sequence[str], device: torch.device | str | None = None,
               batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, L, D) and mask (B, L) of ``texts``, in batches, padded to a common length."""
        device = device or next(self.model.parameters()).device
        embs, masks = [], []
        for i in range(0, len(texts), batch_size):
            ids, mask = self.tokenize(texts[i:i + batch_size])
            embs.append(self(ids.to(device), mask.to(device)))
            masks.append(mask.to(device))
        length = max(m.shape[1] for m in masks)
        emb = torch.cat([nn.functional.pad(e, (0, 0, 0, length - e.shape[1])) for e in embs])
        mask = torch.cat([nn.functional.pad(m, (0, length - m.shape[1])) for m in masks])
        return emb, mask

    def save_pretrained(self, out: str | Path) -> None:
        """``out/text_encoder`` (T5EncoderModel) and ``out/tokenizer`` (AutoTokenizer)."""
        out = Path(out)
        self.model.save_pretrained(out / "text_encoder")
        self.tokenizer.save_pretrained(out / "tokenizer")


def load_text_encoder(name_or_dir: str, max_length: int | None = None) -> TextEncoder:
    """A pretrained T5 encoder by hub name or directory (``dir/text_encoder`` + ``dir/tokenizer`` also work).

    ``max_length`` defaults to the tokenizer's ``model_max_length`` (at most 512).
    """
    from transformers import AutoTokenizer, T5EncoderModel

    p = Path(name_or_dir)
    model_dir = p / "text_encoder" if (p / "text_encoder").is_dir() else p
    tok_dir = p / "tokenizer" if (p / "tokenizer").is_dir() else p
    model = T5EncoderModel.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    return TextEncoder(tokenizer, model, max_length=max_length or min(int(tokenizer.model_max_length), 512))


def new_text_encoder(cfg: TextEncoderConfig, captions: Iterable[str], seed: int = 0) -> TextEncoder:
    """A from-scratch T5 encoder with a tokenizer trained on ``captions`` (random weights)."""
    from transformers import T5EncoderModel

    tokenizer = train_tokenizer(captions, cfg.vocab_size)
    tokenizer.model_max_length = cfg.max_length
    torch.manual_seed(seed)
    model = T5EncoderModel(t5_config(cfg, len(tokenizer)))
    return TextEncoder(tokenizer, model, max_length=cfg.max_length)


# --------------------------------------------------------------------------------------------------
# span-corruption pretraining (T5), then the encoder is kept and frozen


def span_corrupt(ids: Sequence[int], rng: np.random.Generator, sentinels: Sequence[int], eos: int,
                 noise_density: float = 0.15, mean_span: float = 3.0) -> tuple[list[int], list[int]]:
    """T5's span corruption of one sequence (without its eos): (input ids, target ids), both eos-terminated.

    About ``noise_density`` of the tokens, in spans of mean length ``mean_span``, are replaced in the input
    by one sentinel each; the target lists each sentinel followed by the tokens it hid.
    """
    n = len(ids)
    n_noise = max(1, int(round(n * noise_density)))
    n_spans = max(1, min(int(round(n_noise / mean_span)), n_noise, len(sentinels)))
    starts = np.sort(rng.choice(n, size=n_spans, replace=False))
    noise = np.zeros(n, dtype=bool)
    per = max(1, n_noise // n_spans)
    for s in starts:
        noise[s:s + per] = True
    inp, tgt, k, i = [], [], 0, 0
    while i < n:
        if noise[i]:
            inp.append(sentinels[k])
            tgt.append(sentinels[k])
            while i < n and noise[i]:
                tgt.append(ids[i])
                i += 1
            k = min(k + 1, len(sentinels) - 1)
        else:
            inp.append(ids[i])
            i += 1
    return inp + [eos], tgt + [eos]


def pretrain_text_encoder(encoder: TextEncoder, captions: Sequence[str], steps: int, batch_size: int = 64,
                          lr: float = 1e-3, seed: int = 0, device: str | torch.device = "cpu") -> list[float]:
    """Pretrain ``encoder``'s T5 in place with span corruption on ``captions``; returns the loss curve.

    A T5 decoder (2 layers) is built beside the encoder for the objective and thrown away afterwards.
    """
    from transformers import T5ForConditionalGeneration

    tok, enc = encoder.tokenizer, encoder.model
    cfg = enc.config
    full = T5ForConditionalGeneration(t5_config(
        TextEncoderConfig(d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff, num_layers=cfg.num_layers,
                          num_heads=cfg.num_heads, dropout_rate=cfg.dropout_rate),
        cfg.vocab_size, decoder_layers=2))
    start = enc.state_dict()
    missing = full.load_state_dict(start, strict=False).missing_keys
    assert all(k.startswith(("decoder.", "lm_head.")) for k in missing), missing
    full.to(device).train()
    texts = sorted({c for c in captions if c})
    ids = [tok(t, add_special_tokens=False, truncation=True, max_length=encoder.max_length - 1)["input_ids"]
           for t in texts]
    ids = [x for x in ids if len(x) >= 2]
    if not ids:
        raise ValueError("no caption of two or more tokens to pretrain the text encoder on")
    sentinels = tok.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(N_SENTINELS)])
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = adamw(full.parameters(), device, lr=lr)
    losses = []
    for step in range(steps):
        pick = torch.randint(len(ids), (batch_size,), generator=gen).tolist()
        pairs = [span_corrupt(ids[i], rng, sentinels, tok.eos_token_id) for i in pick]
        x, xm = _pad([p[0] for p in pairs], 0)
        y, _ = _pad([p[1] for p in pairs], -100)
        loss = full(input_ids=x.to(device), attention_mask=xm.to(device), labels=y.to(device)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            losses.append(float(loss.detach()))
            log.info("text encoder pretrain step %d/%d loss %.4f", step + 1, steps, losses[-1])
    trained = full.state_dict()
    enc.load_state_dict({k: trained[k] for k in enc.state_dict()})
    enc.to(device)
    return losses


def _pad(seqs: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in seqs)
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return out, mask
