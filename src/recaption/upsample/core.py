"""Prompt upsampling (paper section 4 and Appendix C): short prompt -> 15-80 word description.

:class:`Upsampler` sends the Appendix C chat to a backend and holds the answer to the word limits: over
``max_words`` it is cut at a sentence end (or a word boundary); under ``min_words`` the request is retried and,
if still short, returned with an ``error`` flag. :class:`Conversation` carries the paper's conversation
semantics: a follow-up (``ask``) sends the earlier turns so the backend can refactor the previous description;
``new`` starts afresh. :func:`upsample_file` runs a prompt file in batch and writes one JSONL line per prompt.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recaption.upsample.backends import Backend, UpsampleError, UpsampleRequest
from recaption.upsample.prompt import (
    MAX_WORDS,
    MIN_WORDS,
    UpsamplePrompt,
    appendix_c,
    clean_output,
    count_words,
    cut_to_words,
)

log = logging.getLogger(__name__)


@dataclass
class UpsampleResult:
    """One line of the batch output."""

    prompt: str
    upsampled: str
    backend: str
    words: int
    error: str | None = None
    cut: bool = False  # the backend's text was over max_words and was cut
    attempts: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Upsampler:
    """A backend plus the Appendix C prompt and the word limits."""

    def __init__(self, backend: Backend, prompt: UpsamplePrompt | None = None, min_words: int = MIN_WORDS,
                 max_words: int = MAX_WORDS, short_retries: int = 2) -> None:
        self.backend = backend
        self.prompt = prompt or appendix_c()
        self.min_words, self.max_words, self.short_retries = min_words, max_words, short_retries

    def upsample(self, prompt: str | list[str], history: tuple[tuple[str, str], ...] = ()) -> Any:
        """Upsample one prompt (with earlier turns of its conversation) -> :class:`UpsampleResult`.

        Given a LIST of prompts (each a fresh request), returns the list of upsampled texts, raising
        :class:`UpsampleError` naming the first prompt that failed or stayed under the word minimum; this is
        the form image generation uses. Backend failures raise.
        """
        if isinstance(prompt, list):
            out = []
            for p in prompt:
                r = self.upsample(p)
                if r.error:
                    raise UpsampleError(f"upsampling {p!r} with {r.backend}: {r.error}")
                out.append(r.upsampled)
            return out
        req = UpsampleRequest(prompt=prompt, history=tuple(history), messages=self.prompt.messages(prompt, history))
        text, attempts = "", 0
        for attempts in range(1, self.short_retries + 2):
            text = clean_output(self.backend.complete(req))
            if count_words(text) >= self.min_words:
                break
            log.debug("upsample %r: %d words < %d, attempt %d", prompt, count_words(text), self.min_words, attempts)
        cut_text = cut_to_words(text, self.max_words, self.min_words)
        n = count_words(cut_text)
        err = None if n >= self.min_words else f"too short: {n} words after {attempts} attempts (min {self.min_words})"
        return UpsampleResult(prompt, cut_text, self.backend.name, n, err, cut=cut_text != text, attempts=attempts)


class Conversation:
    """The paper's conversation semantics over one upsampler.

    ``ask`` is a follow-up: the earlier (request, description) turns are sent, so "make the light red" can
    refactor the previous description. ``new`` forgets the conversation first and starts afresh.
    """

    def __init__(self, upsampler: Upsampler) -> None:
        self.upsampler = upsampler
        self.history: list[tuple[str, str]] = []

    def ask(self, request: str) -> UpsampleResult:
        r = self.upsampler.upsample(request, tuple(self.history))
        self.history.append((request, r.upsampled))
        return r

    def new(self, request: str) -> UpsampleResult:
        self.history.clear()
        return self.ask(request)


def load_upsampler(spec: str, **options: Any) -> Upsampler:
    """An :class:`Upsampler` over the backend named by ``spec`` (see :func:`load_backend`)."""
    from recaption.upsample.backends import load_backend

    return Upsampler(load_backend(spec, **options))


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: ``.txt`` one a line; ``.tsv``/``.csv`` with a ``prompt`` column (else the first
    column); ``.jsonl`` with a ``prompt`` field. Blank lines are skipped."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file {str(p)!r} not found")
    ext = p.suffix.lower()
    if ext in (".tsv", ".csv"):
        with p.open(newline="") as f:
            rows = list(csv.reader(f, delimiter="\t" if ext == ".tsv" else ","))
        if not rows:
            return []
        col = rows[0].index("prompt") if "prompt" in rows[0] else 0
        body = rows[1:] if "prompt" in rows[0] else rows
        return [r[col].strip() for r in body if len(r) > col and r[col].strip()]
    if ext == ".jsonl":
        out = []
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if line.strip():
                try:
                    d = json.loads(line)
                    out.append(str(d["prompt"]) if isinstance(d, dict) else str(d))
                except (json.JSONDecodeError, KeyError) as e:
                    raise ValueError(f"{p}:{i}: expected a JSON object with a 'prompt' field ({e})") from e
        return out
    return [s.strip() for s in p.read_text().splitlines() if s.strip()]


def upsample_file(upsampler: Upsampler, prompts_path: str | Path, out_path: str | Path,
                  resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Upsample every prompt of a file into a JSONL of (prompt, upsampled, backend, words, error).

    A prompt whose backend fails (timeout, garbage, HTTP error after retries) gets a line with ``error`` set
    and an empty ``upsampled``; the batch goes on. With ``resume``, prompts already written without error are
    skipped. Returns a summary (counts, word range).
    """
    from tqdm import tqdm

    prompts = read_prompts(prompts_path)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    if resume and out.is_file():
        for line in out.read_text().splitlines():
            d = json.loads(line)
            if not d.get("error"):
                done.add(d["prompt"])
    results: list[UpsampleResult] = []
    with out.open("a" if resume else "w") as f:
        for prompt in tqdm(prompts, desc="upsample", disable=not progress):
            if prompt in done:
                continue
            try:
                r = upsampler.upsample(prompt)
            except Exception as e:  # one prompt's failure is recorded, never the batch's end
                r = UpsampleResult(prompt, "", upsampler.backend.name, 0, f"{type(e).__name__}: {e}")
                log.warning("upsample failed for %r: %s", prompt[:60], r.error)
            results.append(r)
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
            f.flush()
    ok = [r for r in results if not r.error]
    return {"prompts": len(prompts), "written": len(results), "skipped": len(done), "ok": len(ok),
            "errors": len(results) - len(ok), "cut": sum(r.cut for r in results),
            "min_words": min((r.words for r in ok), default=None), "max_words": max((r.words for r in ok), default=None),
            "backend": upsampler.backend.name, "out": str(out)}


__all__ = ["Conversation", "Upsampler", "UpsampleResult", "UpsampleError", "load_upsampler", "read_prompts",
           "upsample_file"]
