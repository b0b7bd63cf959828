"""Tokenizers trained on a dataset's own captions with the ``tokenizers`` library.

World models are trained from scratch, so their vocabulary comes from the data: a byte-level BPE
(GPT-2's scheme) keeps every string encodable, including the few random letters written on signs,
while the closed world vocabulary still ends up as one token per word. The result is wrapped as a
transformers ``PreTrainedTokenizerFast`` so it saves and loads with ``save_pretrained`` /
``AutoTokenizer.from_pretrained`` like any hub tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<|pad|>", "<|unk|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, lowercase: bool = False,
                    add_special: bool = True, model_max_length: int = 77) -> Any:
    """Train a byte-level BPE on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    Special ids: pad 0, unk 1, bos 2, eos 3 (eos must not be 2: transformers' CLIP text tower treats
    eos id 2 as the legacy "pool at the highest id" convention).
    ``add_special``: encodings get ``BOS ... EOS`` (what CLIP's text tower pools on); the captioner
    adds its own and trains with ``add_special=False``. ``lowercase`` folds case (CLIP-style).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    norms = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(norms)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    if add_special:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}", special_tokens=[(BOS, tok.token_to_id(BOS)), (EOS, tok.token_to_id(EOS))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, model_max_length=model_max_length, clean_up_tokenization_spaces=False)
