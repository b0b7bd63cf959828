"""The paper's Appendix C upsampling prompt (package data), the chat it builds, and the 15-80 word rule."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

MIN_WORDS = 15
MAX_WORDS = 80


@dataclass(frozen=True)
class UpsamplePrompt:
    """System text, the user-turn template (with ``{prompt}``) and the few-shot turns of Appendix C."""

    system: str
    user_template: str
    few_shot: tuple[dict[str, str], ...]
    source: str = ""

    def user_turn(self, prompt: str) -> dict[str, str]:
        return {"role": "user", "content": self.user_template.format(prompt=prompt)}

    def messages(self, prompt: str, history: list[tuple[str, str]] | tuple = ()) -> list[dict[str, str]]:
        """System, few-shot turns, this conversation's earlier (request, description) turns, then the request."""
        msgs = [{"role": "system", "content": self.system}, *[dict(t) for t in self.few_shot]]
        for req, desc in history:
            msgs += [self.user_turn(req), {"role": "assistant", "content": desc}]
        msgs.append(self.user_turn(prompt))
        return msgs


@functools.lru_cache(maxsize=1)
def appendix_c() -> UpsamplePrompt:
    """The prompt of the paper's Appendix C, read from ``recaption/data/upsample_prompt.json``."""
    d: dict[str, Any] = json.loads(resources.files("recaption").joinpath("data/upsample_prompt.json").read_text())
    return UpsamplePrompt(d["system"], d["user_template"], tuple(d["few_shot"]), d.get("source", ""))


def count_words(text: str) -> int:
    return len(text.split())


_SENT_END = re.compile(r"[.!?][\"')\]]*$")


def clean_output(text: str) -> str:
    """Strip what chat models wrap a description in: whitespace, one pair of [brackets] or quotes, a label."""
    t = text.strip()
    t = re.sub(r"^(image description|description|caption)\s*:\s*", "", t, flags=re.I)
    for a, b in (("[", "]"), ('"', '"'), ("'", "'"), ("\u201c", "\u201d")):
        if len(t) >= 2 and t.startswith(a) and t.endswith(b):
            t = t[1:-1].strip()
    return " ".join(t.split())


def cut_to_words(text: str, max_words: int = MAX_WORDS, min_words: int = MIN_WORDS) -> str:
    """Hold ``text`` to ``max_words``: cut at the last sentence end within the limit (if that keeps at least
    ``min_words``), else at the word limit. Shorter text comes back unchanged."""
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words)
    for n in range(max_words, min_words - 1, -1):
        if _SENT_END.search(words[n - 1]):
            return " ".join(words[:n])
    return " ".join(words[:max_words])
