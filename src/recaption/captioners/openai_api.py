"""Captions from any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp server).

Each image goes as a base64 PNG data URL in one chat message with the mode's prompt. Requests run in a
thread pool of ``max_concurrency``; each has a ``timeout`` and is retried with exponential backoff and
jitter on 429, 5xx, timeouts and dropped connections (the client's own retries are off, so the policy
is this one, visible and testable). Any other error, and any response without a non-empty text answer,
raises :class:`CaptionerError` naming the model, the endpoint and what was wrong.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from recaption.captioners.base import CaptionerError, check_mode
from recaption.records import Provenance

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = {
    "short": "Write a short caption for this image: name its main subject in one sentence of at most 20 words.",
    "descriptive": ("Describe this image in detail in one paragraph: every object with its colour, size, shape, "
                    "texture and position, how many there are, where they are relative to each other, the "
                    "background, and any text written in the image, quoted exactly."),
}
"""The prompt per mode (the user may pass their own)."""

RETRYABLE_STATUS = (408, 409, 429, 500, 502, 503, 504)


def image_data_url(img: Any) -> str:
    """An RGB PIL image as a ``data:image/png;base64,...`` URL."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAICaptioner:
    """The Captioner protocol over ``/v1/chat/completions`` of ``base_url`` with model ``model``."""

    name = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 prompts: dict[str, str] | None = None, max_concurrency: int = 8, timeout: float = 60.0,
                 max_retries: int = 5, backoff: float = 1.0, max_tokens: int = 300,
                 temperature: float = 0.0) -> None:
        import openai

        self.model, self.base_url = model, base_url
        self.prompts = {**DEFAULT_PROMPTS, **(prompts or {})}
        self.max_concurrency, self.max_retries, self.backoff = max_concurrency, max_retries, backoff
        self.max_tokens, self.temperature = max_tokens, temperature
        self.version = f"{model}@{base_url or 'api.openai.com'}"
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none",
                                    timeout=timeout, max_retries=0)

    def provenance(self, mode: str) -> Provenance:
        check_mode(mode)
        return Provenance.now(self.name, self.version, mode, self.prompts[mode], temperature=self.temperature)

    def caption(self, images: list[Any], mode: str) -> list[str]:
        check_mode(mode)
        if not images:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(images)))) as pool:
            return list(pool.map(lambda im: self._one(im, mode), images))

    def _one(self, img: Any, mode: str) -> str:
        import openai

        messages = [{"role": "user", "content": [{"type": "text", "text": self.prompts[mode]},
                                                 {"type": "image_url", "image_url": {"url": image_data_url(img)}}]}]
        where = f"model {self.model!r} at {self.base_url or 'api.openai.com'}"
        for attempt in range(self.max_retries + 1):
            try:
                resp = self.client.chat.completions.create(model=self.model, messages=messages,
                                                           max_tokens=self.max_tokens, temperature=self.temperature)
                return self._text(resp, where)
            except (openai.APITimeoutError, openai.APIConnectionError) as e:
                err: Exception = e
            except openai.APIStatusError as e:
                if e.status_code not in RETRYABLE_STATUS:
                    raise CaptionerError(f"{where}: HTTP {e.status_code}: {e.message}") from e
                err = e
            except openai.APIResponseValidationError as e:
                raise CaptionerError(f"{where}: malformed response: {e}") from e
            except ValueError as e:  # body that is not JSON
                raise CaptionerError(f"{where}: malformed response: {e}") from e
            if attempt == self.max_retries:
                raise CaptionerError(f"{where}: gave up after {attempt + 1} tries: {type(err).__name__}: {err}") from err
            delay = self.backoff * 2 ** attempt * (0.5 + random.random())
            log.warning("%s: %s; retry %d/%d in %.1f s", where, type(err).__name__, attempt + 1, self.max_retries,
                        delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    @staticmethod
    def _text(resp: Any, where: str) -> str:
        choices = getattr(resp, "choices", None)
        if not choices:
            raise CaptionerError(f"{where}: malformed response: no choices in {str(resp)[:200]!r}")
        message = getattr(choices[0], "message", None)
        text = getattr(message, "content", None)
        if not isinstance(text, str) or not text.strip():
            raise CaptionerError(f"{where}: malformed response: no text content in the first choice "
                                 f"({str(choices[0])[:200]!r})")
        return text.strip()
