"""Tiny models for tests (ours and other areas'): built from configs in code, trained for a few steps.

No machine here reaches a model hub, so tests that need a CLIP, a clip-prefix captioner or a BLIP make
one of these in a temporary folder. They are random or barely trained: they exercise code paths, they
do not caption well.
"""

from __future__ import annotations

import os
from typing import Any

TINY_CLIP = dict(steps=3, batch_size=16, heldout=8, vision_width=32, vision_layers=1, text_width=32,
                 text_layers=1, heads=2, projection_dim=16, vocab_size=300, warmup=1)
TINY_PREFIX = dict(lm_width=32, lm_layers=1, lm_heads=2, mapper_layers=1, prefix_len=4, vocab_size=300,
                   max_caption_tokens=160, dropout=0.0, finetune_vision=True)


def world_records(n: int = 48, seed: int = 0) -> list[Any]:
    """``n`` shapes-world records (64 px)."""
    from recaption.world.dataset import generate_records

    return list(generate_records(n, seed=seed))


def tiny_clip(out: str, records: list[Any] | None = None, **overrides: Any) -> str:
    """Train a tiny world CLIP for a few steps into ``out``; returns ``out``."""
    from recaption.clip.train import ClipTrainConfig, train_clip

    train_clip(records if records is not None else world_records(), out, ClipTrainConfig(**{**TINY_CLIP, **overrides}))
    return out


def tiny_clip_prefix(out: str, records: list[Any] | None = None, clip: str | None = None, stage: str = "alt",
                     steps: int = 3, **overrides: Any) -> str:
    """A tiny clip-prefix checkpoint of ``stage`` in ``out`` (alt trained first when a fine-tune is asked)."""
    from recaption.captioners.clip_prefix import ClipPrefixConfig
    from recaption.captioners.train_prefix import CaptionerTrainConfig, train_captioner

    records = records if records is not None else world_records()
    clip = clip or tiny_clip(os.path.join(out, "_clip"), records)
    alt = out if stage == "alt" else os.path.join(out, "_alt")
    train_captioner(records, alt, CaptionerTrainConfig(stage="alt", steps=steps, batch_size=8, warmup=1),
                    clip=clip, model_cfg=ClipPrefixConfig(**{**TINY_PREFIX, **overrides}))
    if stage != "alt":
        train_captioner(records, out, CaptionerTrainConfig(stage=stage, steps=steps, batch_size=8, warmup=1,
                                                           finetune_size="0.25"), init=alt)
    return out


def tiny_blip(out: str) -> str:
    """A random tiny BlipForConditionalGeneration + BlipProcessor saved to ``out`` (ids below the vocab)."""
    from transformers import BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipProcessor

    try:
        from transformers import BlipImageProcessorPil as ImgProc
    except ImportError:  # older transformers
        from transformers import BlipImageProcessor as ImgProc
    os.makedirs(out, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "red", "blue", "green", "circle", "square",
             "picture", "of", "detailed", "the", "on", "left", "right", "two", "three"]
    vocab = os.path.join(out, "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(words) + "\n")
    tok = BertTokenizerFast(vocab, bos_token="[DEC]")
    text = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
                sep_token_id=tok.sep_token_id, max_position_embeddings=64)
    vision = dict(hidden_size=32, image_size=32, patch_size=8, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=37)
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(out)
    BlipProcessor(image_processor=ImgProc(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(out)
    return out


BLIP_VQA_WORDS = "a an the green blue red bench bowl cake round square pizza box wooden metallic of and yes no ?".split()


def tiny_blip_vqa(out: str, seed: int = 0) -> str:
    """A random tiny BlipForQuestionAnswering + BlipProcessor (answers include yes/no) saved to ``out``."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipProcessor

    try:
        from transformers import BlipImageProcessorPil as ImgProc
    except ImportError:  # older transformers
        from transformers import BlipImageProcessor as ImgProc
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BLIP_VQA_WORDS, "[DEC]", "[ENC]"]
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, bos_token="[DEC]",
                        additional_special_tokens=["[ENC]"])
    ids = {t: i for i, t in enumerate(vocab)}
    torch.manual_seed(seed)
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=ids["[DEC]"],
                         eos_token_id=ids["[SEP]"], sep_token_id=ids["[SEP]"], pad_token_id=ids["[PAD]"],
                         encoder_hidden_size=32),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    BlipForQuestionAnswering(cfg).save_pretrained(out)
    BlipProcessor(image_processor=ImgProc(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(out)
    return out


LLAVA_TEMPLATE = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
                  "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n"
                  "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def tiny_llava(out: str) -> str:
    """A random tiny LLaVA (CLIP vision + Llama) whose processor has a chat template, saved to ``out``."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from recaption.clip.tokenizer import train_tokenizer

    try:
        from transformers import CLIPImageProcessorPil as ImgProc
    except ImportError:  # older transformers
        from transformers import CLIPImageProcessor as ImgProc
    tok = train_tokenizer(["a red circle on the left", "USER: ASSISTANT: describe the image"] * 3, vocab_size=300,
                          model_max_length=10**6)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, max_position_embeddings=256)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=-1, vision_feature_select_strategy="default")
    LlavaForConditionalGeneration(cfg).save_pretrained(out)
    LlavaProcessor(image_processor=ImgProc(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                   tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", chat_template=LLAVA_TEMPLATE,
                   num_additional_image_tokens=1).save_pretrained(out)
    return out
