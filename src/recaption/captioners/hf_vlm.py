"""Any transformers vision-language model as a captioner (BLIP, BLIP-2, Florence-2, LLaVA, Qwen2-VL, ...).

transformers 5 has no image-to-text pipeline and no AutoModelForVision2Seq: ``AutoModelForImageTextToText``
with ``AutoProcessor`` covers them. Where the processor has a chat template (LLaVA, Qwen2-VL, ...) the
mode's prompt goes in a user turn with an image placeholder; otherwise (BLIP) the prompt is a plain text
prefix the model continues, which is how BLIP's conditional captioning works (empty for ``short``). The
echoed prompt is cut from the output. Batched; ``dtype`` and ``device`` as given.
"""

from __future__ import annotations

import logging
from typing import Any

from recaption.captioners.base import CaptionerError, check_mode
from recaption.records import Provenance

log = logging.getLogger(__name__)

CHAT_PROMPTS = {
    "short": "Write a short caption for this image: its main subject, in one sentence of at most 20 words.",
    "descriptive": ("Describe this image in detail: every object with its colour, size, shape, texture and "
                    "position, how many there are, where they are relative to each other, the background, "
                    "and any text in the image, quoted exactly."),
}
PREFIX_PROMPTS = {"short": "", "descriptive": "a detailed picture of"}
"""Prompts for processors without a chat template (BLIP continues the prefix)."""


class HFVLMCaptioner:
    """The Captioner protocol over ``AutoModelForImageTextToText`` + ``AutoProcessor``."""

    name = "hf-vlm"

    def __init__(self, name_or_path: str, device: str = "cpu", dtype: str | None = None,
                 prompts: dict[str, str] | None = None, batch_size: int = 8, max_new_tokens: int = 120,
                 num_beams: int = 1) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        kw = {"dtype": getattr(torch, dtype)} if dtype else {}
        try:
            self.processor = AutoProcessor.from_pretrained(name_or_path)
            self.model = AutoModelForImageTextToText.from_pretrained(name_or_path, **kw).to(device).eval()
        except OSError as e:
            raise FileNotFoundError(f"cannot load vision-language model {name_or_path!r}: not a local "
                                    f"checkpoint and not reachable on the model hub ({type(e).__name__})") from e
        self.device, self.batch_size = device, batch_size
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams
        self.chat = bool(getattr(self.processor, "chat_template", None))
        self.prompts = {**(CHAT_PROMPTS if self.chat else PREFIX_PROMPTS), **(prompts or {})}
        self.path = name_or_path
        self.version = f"{name_or_path}@{getattr(self.model.config, 'model_type', '?')}"

    def provenance(self, mode: str) -> Provenance:
        check_mode(mode)
        return Provenance.now(self.name, self.version, mode, self.prompts[mode], chat=self.chat)

    def _text(self, mode: str) -> str:
        if not self.chat:
            return self.prompts[mode]
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompts[mode]}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def caption(self, images: list[Any], mode: str) -> list[str]:
        import torch

        check_mode(mode)
        text, out = self._text(mode), []
        tok = getattr(self.processor, "tokenizer", None)
        if tok is not None and self.chat:
            tok.padding_side = "left"  # decoder-only VLMs generate after the prompt; pad before it
        for i in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[i:i + self.batch_size]]
            kw = {"text": [text] * len(batch)} if text else {}
            try:
                inputs = self.processor(images=batch, return_tensors="pt", padding=True, **kw).to(self.device)
                if "pixel_values" in inputs:
                    inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
                with torch.no_grad():
                    ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                                              do_sample=False)
            except (RuntimeError, ValueError) as e:
                raise CaptionerError(f"{self.path}: generation failed: {type(e).__name__}: {e}") from e
            ids = strip_prompt(ids, inputs.get("input_ids"))
            texts = self.processor.batch_decode(ids, skip_special_tokens=True)
            out += [strip_text_prefix(t, self.prompts[mode]) for t in texts]
        return out


def strip_prompt(ids: Any, input_ids: Any) -> Any:
    """Cut the echoed prompt tokens (decoder-only VLMs and BLIP return prompt + continuation)."""
    if input_ids is None or ids.shape[1] < input_ids.shape[1]:
        return ids
    L = input_ids.shape[1]
    if bool((ids[:, :L] == input_ids.to(ids.device)).all()):
        return ids[:, L:]
    return ids


def strip_text_prefix(text: str, prompt: str) -> str:
    """``"a detailed picture of a cat"`` -> ``"a cat"`` when the model echoed a plain-text prompt."""
    t = text.strip()
    p = prompt.strip().lower()
    if p and t.lower().startswith(p):
        t = t[len(p):].strip()
    return t
