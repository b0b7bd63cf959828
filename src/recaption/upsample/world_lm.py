"""The world's upsampler: a small GPT-2 trained from scratch to turn short captions into descriptive ones.

In the paper GPT-4 rewrites short prompts into the descriptive style the image model was trained on. In the
shapes world there is no GPT-4, but there is text: the world's true short and descriptive captions
(``meta["world"]["truth"]``, read with :func:`recaption.world.truth_caption`). A byte-level BPE tokenizer
(``tokenizers``) and a tiny ``GPT2LMHeadModel`` learn ``<bos> short <sep> descriptive <eos>`` with the loss on
the descriptive part only. Saved in ``save_pretrained`` layout with ``upsampler.json`` (its config) beside it.

It has no notion of follow-up requests: it upsamples the latest request and ignores the conversation.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recaption.upsample.backends import UpsampleRequest

log = logging.getLogger(__name__)

BOS, SEP, EOS, PAD = "<|bos|>", "<|sep|>", "<|eos|>", "<|pad|>"


@dataclass(frozen=True)
class WorldLMConfig:
    """Model, tokenizer and training settings (saved as ``upsampler.json``)."""

    vocab_size: int = 600
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 192
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 50
    seed: int = 0
    max_new_tokens: int = 120


def load_pairs(path: str | Path, limit: int | None = None) -> list[tuple[str, str]]:
    """(short, descriptive) pairs: from a JSONL with ``short``/``descriptive`` fields, or from world records
    in any :mod:`recaption.io` format (truth read with :func:`recaption.world.truth_caption`)."""
    p = Path(str(path))
    pairs: list[tuple[str, str]] = []
    if p.is_file() and p.suffix == ".jsonl":
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            d = json.loads(line)
            if "short" not in d or "descriptive" not in d:
                raise ValueError(f"{p}:{i}: expected 'short' and 'descriptive' fields")
            pairs.append((d["short"], d["descriptive"]))
            if limit and len(pairs) >= limit:
                break
        return pairs
    from recaption.io import read_records
    from recaption.world import truth_caption

    for rec in read_records(str(path)):
        s, d = truth_caption(rec, "short"), truth_caption(rec, "descriptive")
        if s and d:
            pairs.append((s, d))
        if limit and len(pairs) >= limit:
            break
    if not pairs:
        raise ValueError(f"no (short, descriptive) truth pairs in {path!r}: is it world data?")
    return pairs


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``, with our four special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, SEP, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   sep_token=SEP)


def _encode(tok: Any, short: str, desc: str | None) -> tuple[list[int], int]:
    """Token ids of ``<bos> short <sep> [desc <eos>]`` and the length of the prefix (no loss there)."""
    pre = [tok.bos_token_id, *tok.encode(" " + short.strip()), tok.sep_token_id]
    if desc is None:
        return pre, len(pre)
    return pre + tok.encode(" " + desc.strip()) + [tok.eos_token_id], len(pre)


def train_world_lm(pairs: list[tuple[str, str]], out_dir: str | Path, cfg: WorldLMConfig = WorldLMConfig(),
                   progress: bool = True) -> Path:
    """Train the tokenizer and the tiny GPT-2 on ``pairs``; save to ``out_dir``; return it."""
    import torch
    from tqdm import tqdm
    from transformers import GPT2Config, GPT2LMHeadModel

    if not pairs:
        raise ValueError("no training pairs")
    torch.manual_seed(cfg.seed)
    tok = train_tokenizer([t for p in pairs for t in p], cfg.vocab_size)
    seqs = []
    for s, d in pairs:
        ids, n_pre = _encode(tok, s, d)
        if len(ids) <= cfg.n_positions:
            seqs.append((ids, n_pre))
    if not seqs:
        raise ValueError(f"every pair is longer than n_positions={cfg.n_positions} tokens")
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=cfg.n_positions, n_embd=cfg.n_embd,
                                       n_layer=cfg.n_layer, n_head=cfg.n_head, bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    warmup = max(1, min(cfg.warmup, cfg.steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    g = torch.Generator().manual_seed(cfg.seed)
    model.train()
    loss_v = float("nan")
    for step in (bar := tqdm(range(cfg.steps), desc="train world upsampler", disable=not progress)):
        batch = [seqs[i] for i in torch.randint(len(seqs), (cfg.batch_size,), generator=g).tolist()]
        T = max(len(ids) for ids, _ in batch)
        x = torch.full((len(batch), T), tok.pad_token_id)  # (B, T)
        y = torch.full((len(batch), T), -100)
        att = torch.zeros((len(batch), T), dtype=torch.long)
        for b, (ids, n_pre) in enumerate(batch):
            x[b, :len(ids)] = torch.tensor(ids)
            y[b, n_pre:len(ids)] = torch.tensor(ids[n_pre:])  # loss on the description only
            att[b, :len(ids)] = 1
        loss = model(input_ids=x, attention_mask=att, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            loss_v = loss.item()
            bar.set_postfix(loss=f"{loss_v:.3f}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "upsampler.json").write_text(json.dumps({"kind": "world-lm", "config": asdict(cfg),
                                                    "pairs": len(seqs), "final_loss": loss_v}, indent=2))
    log.info("world upsampler: %d pairs, %d steps, final loss %.3f -> %s", len(seqs), cfg.steps, loss_v, out)
    return out


class WorldLMBackend:
    """Upsample with a trained world LM (greedy by default, so results repeat)."""

    def __init__(self, path: str | Path, device: str = "cpu", do_sample: bool = False, seed: int = 0) -> None:
        from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

        p = Path(path)
        if not (p / "upsampler.json").is_file():
            raise FileNotFoundError(f"{str(p)!r} is not a world upsampler (no upsampler.json); "
                                    "train one with `recaption upsample train`")
        meta = json.loads((p / "upsampler.json").read_text())
        self.cfg = WorldLMConfig(**meta["config"])
        self.tok = PreTrainedTokenizerFast.from_pretrained(p)
        self.model = GPT2LMHeadModel.from_pretrained(p).eval().to(device)
        self.device, self.do_sample, self.seed = device, do_sample, seed
        self.name = f"world:{p}"

    def complete(self, request: UpsampleRequest) -> str:
        import torch

        ids, _ = _encode(self.tok, request.prompt, None)
        ids = ids[-(self.cfg.n_positions - 8):]
        x = torch.tensor([ids], device=self.device)
        torch.manual_seed(self.seed)
        with torch.no_grad():
            out = self.model.generate(x, attention_mask=torch.ones_like(x), do_sample=self.do_sample,
                                      max_new_tokens=min(self.cfg.max_new_tokens, self.cfg.n_positions - x.shape[1]),
                                      eos_token_id=self.tok.eos_token_id, pad_token_id=self.tok.pad_token_id)
        return self.tok.decode(out[0, x.shape[1]:], skip_special_tokens=True).strip()
