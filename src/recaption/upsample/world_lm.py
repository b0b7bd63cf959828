"""The world's upsampler: a small GPT-2 trained from scratch to turn short captions into descriptive ones, and
to rewrite a description when a follow-up request asks for a change.

In the paper GPT-4 rewrites short prompts into the descriptive style the image model was trained on, and a
follow-up request ("make the light red") refactors the previous description (Appendix C). In the shapes
world there is no GPT-4, but there is text with known truth: the world's true short and descriptive captions
(``meta["world"]["truth"]``, read with :func:`recaption.world.truth_caption`), and, from the records' scenes,
edit triples (:mod:`recaption.world.edits`): a description, an instruction the world can express ("make the
star bigger", "remove the red circle", "make the background black") and the true description of the edited
scene. A byte-level BPE tokenizer (``tokenizers``) and a tiny ``GPT2LMHeadModel`` learn two sequence forms,
the loss on the part after ``<sep>`` only:

- plain: ``<bos> short <sep> descriptive <eos>``;
- edit: ``<bos> previous description <edit> instruction <sep> new description <eos>``.

:class:`WorldLMBackend` uses the edit form when the request carries a conversation (the previous turn's
description and the new request) and the plain form otherwise, so a new request starts afresh. A checkpoint
trained without edits (older ones included) still loads; it ignores the conversation and says so in the log.
Saved in ``save_pretrained`` layout with ``upsampler.json`` (its config and data counts) beside it.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from recaption.upsample.backends import UpsampleRequest

log = logging.getLogger(__name__)

BOS, SEP, EOS, PAD, EDIT = "<|bos|>", "<|sep|>", "<|eos|>", "<|pad|>", "<|edit|>"

EditText = tuple[str, str, str]
"""(previous description, instruction, new description)."""


@dataclass(frozen=True)
class WorldLMConfig:
    """Model, tokenizer and training settings (saved as ``upsampler.json``).

    ``edit_share`` is the share of training steps whose batch is edit sequences (when there are any);
    ``n_positions`` must hold an edit sequence: two descriptions of up to ~110 tokens and an instruction.
    ``bucket`` draws each batch from sequences of similar length (less padding: on CPU a step costs what
    its longest sequence costs). ``arch`` picks the transformers model class (:data:`ARCHS`): GPT-2 with
    learned absolute positions, or a Llama-style decoder with rotary (relative) positions.
    """

    vocab_size: int = 600
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 320
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 50
    seed: int = 0
    max_new_tokens: int = 120
    edit_share: float = 0.5
    bucket: bool = True
    arch: str = "gpt2"

    def __post_init__(self) -> None:
        if not 0.0 <= self.edit_share <= 1.0:
            raise ValueError(f"edit_share must be in [0, 1], got {self.edit_share}")
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {sorted(ARCHS)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldLMConfig:
        """From a saved config; fields this version does not know are dropped (with a log line), missing
        ones take their defaults, so older and newer checkpoints load."""
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            log.info("world upsampler config: ignoring unknown fields %s", extra)
        return cls(**{k: v for k, v in d.items() if k in known})


def _gpt2(cfg: WorldLMConfig, tok: Any) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=cfg.n_positions, n_embd=cfg.n_embd,
                                      n_layer=cfg.n_layer, n_head=cfg.n_head, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))


def _llama(cfg: WorldLMConfig, tok: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg.n_embd, intermediate_size=3 * cfg.n_embd,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,
        max_position_embeddings=cfg.n_positions, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))


ARCHS: dict[str, Callable[[WorldLMConfig, Any], Any]] = {"gpt2": _gpt2, "llama": _llama}
"""Model builders by ``WorldLMConfig.arch``; the backend loads any of them with AutoModelForCausalLM."""


def _iter_world_text(path: str | Path) -> Iterator[tuple[str, str, Any]]:
    """(short, descriptive, scene or None) from a JSONL of {short, descriptive} or from world records."""
    p = Path(str(path))
    if p.is_file() and p.suffix == ".jsonl":
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            d = json.loads(line)
            if "short" not in d or "descriptive" not in d:
                raise ValueError(f"{p}:{i}: expected 'short' and 'descriptive' fields")
            yield d["short"], d["descriptive"], None
        return
    from recaption.io import read_records
    from recaption.world import record_scene, truth_caption

    for rec in read_records(str(path)):
        s, d = truth_caption(rec, "short"), truth_caption(rec, "descriptive")
        if s and d:
            yield s, d, record_scene(rec)


def load_pairs(path: str | Path, limit: int | None = None) -> list[tuple[str, str]]:
    """(short, descriptive) pairs: from a JSONL with ``short``/``descriptive`` fields, or from world records
    in any :mod:`recaption.io` format (truth read with :func:`recaption.world.truth_caption`)."""
    return load_training_text(path, limit, edits=False)[0]


def load_training_text(path: str | Path, limit: int | None = None, edits: bool = True,
                       seed: int = 0) -> tuple[list[tuple[str, str]], list[EditText]]:
    """Pairs as :func:`load_pairs`, and, for world records, one edit triple per record's scene where an edit
    can be named unambiguously (:func:`recaption.world.edits.edit_triples`). A JSONL of pairs carries no
    scenes, so it gives no edits."""
    pairs, scenes = [], []
    for s, d, scene in _iter_world_text(path):
        pairs.append((s, d))
        if scene is not None:
            scenes.append(scene)
        if limit and len(pairs) >= limit:
            break
    if not pairs:
        raise ValueError(f"no (short, descriptive) truth pairs in {path!r}: is it world data?")
    triples: list[EditText] = []
    if edits and scenes:
        from recaption.world.edits import edit_triples

        triples = [(t.before, t.instruction, t.after) for t in edit_triples(scenes, seed=seed)]
    return pairs, triples


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``, with our five special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, SEP, EOS, EDIT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   sep_token=SEP, additional_special_tokens=[EDIT])


def _target(tok: Any, pre: list[int], desc: str | None) -> tuple[list[int], int]:
    if desc is None:
        return pre, len(pre)
    return pre + tok.encode(" " + desc.strip()) + [tok.eos_token_id], len(pre)


def _encode(tok: Any, short: str, desc: str | None) -> tuple[list[int], int]:
    """Token ids of ``<bos> short <sep> [desc <eos>]`` and the length of the prefix (no loss there)."""
    return _target(tok, [tok.bos_token_id, *tok.encode(" " + short.strip()), tok.sep_token_id], desc)


def _encode_edit(tok: Any, prev: str, instr: str, new: str | None,
                 max_prev: int | None = None) -> tuple[list[int], int]:
    """Token ids of ``<bos> prev <edit> instr <sep> [new <eos>]`` and the prefix length; ``max_prev`` keeps
    only the last tokens of a too-long previous description."""
    p = tok.encode(" " + prev.strip())
    if max_prev is not None and len(p) > max_prev:
        p = p[len(p) - max_prev:]
    pre = [tok.bos_token_id, *p, tok.convert_tokens_to_ids(EDIT), *tok.encode(" " + instr.strip()),
           tok.sep_token_id]
    return _target(tok, pre, new)


def _batch(tok: Any, batch: list[tuple[list[int], int]]) -> tuple[Any, Any, Any]:
    """Right-padded (input ids, labels with -100 outside the target, attention mask), each (B, T)."""
    import torch

    T = max(len(ids) for ids, _ in batch)
    x = torch.full((len(batch), T), tok.pad_token_id)  # (B, T)
    y = torch.full((len(batch), T), -100)
    att = torch.zeros((len(batch), T), dtype=torch.long)
    for b, (ids, n_pre) in enumerate(batch):
        x[b, :len(ids)] = torch.tensor(ids)
        y[b, n_pre:len(ids)] = torch.tensor(ids[n_pre:])  # loss on the target only
        att[b, :len(ids)] = 1
    return x, y, att


def train_world_lm(pairs: list[tuple[str, str]], out_dir: str | Path, cfg: WorldLMConfig = WorldLMConfig(),
                   progress: bool = True, edits: list[EditText] | None = None) -> Path:
    """Train the tokenizer and the tiny GPT-2 on ``pairs`` and ``edits``; save to ``out_dir``; return it.

    Each step's batch is of one form: edit sequences with probability ``cfg.edit_share`` (when ``edits`` are
    given), else plain pairs, so short plain batches are not padded to edit length.
    """
    import torch
    from tqdm import tqdm

    if not pairs:
        raise ValueError("no training pairs")
    edits = list(edits or [])
    torch.manual_seed(cfg.seed)
    tok = train_tokenizer([t for p in pairs for t in p] + [e[1] for e in edits], cfg.vocab_size)
    plain = [s for s in (_encode(tok, a, b) for a, b in pairs) if len(s[0]) <= cfg.n_positions]
    edit_seqs = [s for s in (_encode_edit(tok, *e) for e in edits) if len(s[0]) <= cfg.n_positions]
    longest = max((len(s[0]) for s in plain + edit_seqs), default=0)
    dropped = len(pairs) + len(edits) - len(plain) - len(edit_seqs)
    if not plain:
        raise ValueError(f"every pair is longer than n_positions={cfg.n_positions} tokens")
    if dropped:
        log.warning("world upsampler: %d sequences longer than n_positions=%d dropped", dropped, cfg.n_positions)
    share = cfg.edit_share if edit_seqs else 0.0
    if cfg.edit_share and not edit_seqs:
        log.info("world upsampler: no edit triples (pairs without scenes?): trained without edits; the "
                 "model will ignore conversation history")
    model = ARCHS[cfg.arch](cfg, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    warmup = max(1, min(cfg.warmup, cfg.steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    if cfg.bucket:  # a batch is a window of length-sorted sequences at a random offset
        plain.sort(key=lambda s: len(s[0]))
        edit_seqs.sort(key=lambda s: len(s[0]))
    rng = random.Random(cfg.seed)
    model.train()
    loss_v = {"plain": float("nan"), "edit": float("nan")}
    for step in (bar := tqdm(range(cfg.steps), desc="train world upsampler", disable=not progress)):
        form = "edit" if rng.random() < share else "plain"
        pool = edit_seqs if form == "edit" else plain
        if cfg.bucket:
            lo = rng.randrange(max(1, len(pool) - cfg.batch_size + 1))
            picked = pool[lo:lo + cfg.batch_size]
        else:
            picked = [pool[rng.randrange(len(pool))] for _ in range(cfg.batch_size)]
        x, y, att = _batch(tok, picked)
        loss = model(input_ids=x, attention_mask=att, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0 or step >= cfg.steps - 10:
            loss_v[form] = loss.item()
            bar.set_postfix(plain=f"{loss_v['plain']:.3f}", edit=f"{loss_v['edit']:.3f}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "upsampler.json").write_text(json.dumps({
        "kind": "world-lm", "config": asdict(cfg), "pairs": len(plain), "edits": len(edit_seqs),
        "longest_tokens": longest, "final_loss": loss_v["plain"], "final_edit_loss": loss_v["edit"]}, indent=2))
    log.info("world upsampler: %d pairs, %d edits (longest %d tokens), %d steps, final loss %.3f / edit %.3f -> %s",
             len(plain), len(edit_seqs), longest, cfg.steps, loss_v["plain"], loss_v["edit"], out)
    return out


class WorldLMBackend:
    """Upsample with a trained world LM (greedy by default, so results repeat).

    With conversation history (a follow-up request) and a checkpoint trained on edits, the model is given
    the previous turn's description and the request in the edit form and writes the new description whole;
    otherwise it upsamples the request alone.
    """

    def __init__(self, path: str | Path, device: str = "cpu", do_sample: bool = False, seed: int = 0) -> None:
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

        p = Path(path)
        if not (p / "upsampler.json").is_file():
            raise FileNotFoundError(f"{str(p)!r} is not a world upsampler (no upsampler.json); "
                                    "train one with `recaption upsample train`")
        meta = json.loads((p / "upsampler.json").read_text())
        self.cfg = WorldLMConfig.from_dict(meta["config"])
        self.tok = PreTrainedTokenizerFast.from_pretrained(p)
        self.model = AutoModelForCausalLM.from_pretrained(p).eval().to(device)
        self.device, self.do_sample, self.seed = device, do_sample, seed
        self.name = f"world:{p}"
        self.edits = int(meta.get("edits", 0)) > 0 and EDIT in self.tok.get_vocab()
        self._warned = False
        if not self.edits:
            log.info("world upsampler %s was trained without edits: follow-up requests are upsampled alone "
                     "(conversation history ignored)", p)

    def input_ids(self, request: UpsampleRequest) -> list[int]:
        """The prompt tokens for ``request``: the edit form for a follow-up (when trained on edits), else
        the plain form."""
        prev = request.history[-1][1].strip() if request.history else ""
        if prev and self.edits:
            room = self.cfg.n_positions - min(self.cfg.max_new_tokens, self.cfg.n_positions // 2)
            instr = self.tok.encode(" " + request.prompt.strip())
            return _encode_edit(self.tok, prev, request.prompt, None, max_prev=max(1, room - len(instr) - 3))[0]
        if prev and not self._warned:
            log.warning("%s was trained without edits: ignoring the conversation history", self.name)
            self._warned = True
        ids, _ = _encode(self.tok, request.prompt, None)
        return ids[-(self.cfg.n_positions - 8):]

    def complete(self, request: UpsampleRequest) -> str:
        import torch

        x = torch.tensor([self.input_ids(request)], device=self.device)
        torch.manual_seed(self.seed)
        with torch.no_grad():
            out = self.model.generate(x, attention_mask=torch.ones_like(x), do_sample=self.do_sample,
                                      max_new_tokens=min(self.cfg.max_new_tokens, self.cfg.n_positions - x.shape[1]),
                                      eos_token_id=self.tok.eos_token_id, pad_token_id=self.tok.pad_token_id)
        return self.tok.decode(out[0, x.shape[1]:], skip_special_tokens=True).strip()
