"""A client for OpenAI-compatible chat endpoints, with the retry policy every remote call in the project uses.

Used by the upsampler (text chat) and by the DrawBench judge (vision chat). The ``openai`` client's own retries
are switched off so that the policy is ours and visible: retry on timeouts, connection errors, 429 and 5xx with
exponential backoff; fail at once on other 4xx; turn a response that is not a chat completion into a
:class:`ChatError` that names the endpoint and what came back, so that a batch job records one error for one
prompt instead of crashing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class ChatError(RuntimeError):
    """A chat request failed for good (after retries); the message names the endpoint and the cause."""


@dataclass(frozen=True)
class ChatConfig:
    """How to reach an endpoint and how hard to try."""

    base_url: str | None = None  # None: the openai client's default (OPENAI_BASE_URL or api.openai.com)
    model: str = "gpt-4"
    api_key: str | None = None  # None: OPENAI_API_KEY, or a placeholder for local servers
    timeout_s: float = 60.0
    retries: int = 4
    backoff_s: float = 1.0  # first wait; doubles each retry, capped at 60 s
    max_tokens: int = 300
    temperature: float | None = None


def _retryable(e: Exception) -> bool:
    import openai

    if isinstance(e, (openai.APITimeoutError, openai.APIConnectionError)):
        return True
    if isinstance(e, openai.APIStatusError):
        return e.status_code == 429 or e.status_code >= 500
    return False


class OpenAIChat:
    """``complete(messages) -> str`` against one OpenAI-compatible endpoint, with retries and clear errors."""

    def __init__(self, cfg: ChatConfig, sleep: Callable[[float], None] = time.sleep) -> None:
        import openai

        self.cfg = cfg
        self.sleep = sleep
        key = cfg.api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=key, timeout=cfg.timeout_s, max_retries=0)
        self.where = f"{cfg.base_url or 'default OpenAI endpoint'} (model {cfg.model})"

    def complete(self, messages: list[dict[str, Any]]) -> str:
        """The assistant's text for ``messages``; raises :class:`ChatError` after the retry budget."""
        kw: dict[str, Any] = {"model": self.cfg.model, "messages": messages, "max_tokens": self.cfg.max_tokens}
        if self.cfg.temperature is not None:
            kw["temperature"] = self.cfg.temperature
        wait = self.cfg.backoff_s
        for attempt in range(self.cfg.retries + 1):
            try:
                resp = self.client.chat.completions.create(**kw)
                return self._text(resp)
            except ChatError:
                raise
            except Exception as e:  # openai raises many types; classify, never swallow silently
                if not _retryable(e) or attempt == self.cfg.retries:
                    raise ChatError(f"{self.where}: {type(e).__name__}: {str(e)[:200]}"
                                    + (f" (after {attempt + 1} attempts)" if attempt else "")) from e
                log.warning("%s: %s, retrying in %.1fs (%d/%d)", self.where, type(e).__name__, wait,
                            attempt + 1, self.cfg.retries)
                self.sleep(wait)
                wait = min(wait * 2, 60.0)
        raise AssertionError("unreachable")

    def _text(self, resp: Any) -> str:
        """The message text of a chat completion, or ChatError saying what came back instead."""
        try:
            content = resp.choices[0].message.content
        except (AttributeError, IndexError, TypeError, KeyError):
            content = None
        if not isinstance(content, str) or not content.strip():
            shown = resp if isinstance(resp, str) else getattr(resp, "model_dump_json", lambda: repr(resp))()
            raise ChatError(f"{self.where}: not a chat completion with text: {str(shown)[:200]!r}")
        return content
