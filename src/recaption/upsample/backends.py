"""Upsampling backends behind one protocol, and the registry that picks one from a spec string.

A backend turns one :class:`UpsampleRequest` (the user's prompt, the conversation so far, and the full chat
built from the Appendix C prompt) into text. Chat backends (an OpenAI-compatible endpoint, a local
transformers causal LM) read ``messages``; the world LM and the template stand-in read ``prompt``.

Specs (``load_backend``):

- ``http://host:port/v1`` or ``https://...``: an OpenAI-compatible endpoint at that base URL;
- ``openai`` or ``openai:MODEL``: the openai client's default endpoint (``OPENAI_BASE_URL``/api.openai.com);
- ``template``: a deterministic stand-in that wraps the prompt in fixed descriptive text (for tests and
  pipeline checks; it is not a language model and says so in its name);
- ``world:DIR`` or a folder holding ``upsampler.json``: a world LM trained by ``recaption upsample train``;
- ``hf:NAME`` or any other name/folder: a transformers causal LM (chat template used if it has one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class UpsampleError(RuntimeError):
    """An upsampling backend could not produce a description for one prompt."""


@dataclass(frozen=True)
class UpsampleRequest:
    """One request: the raw user prompt, earlier (request, description) turns, and the chat to send."""

    prompt: str
    history: tuple[tuple[str, str], ...] = ()
    messages: list[dict[str, Any]] = field(default_factory=list)


class Backend(Protocol):
    """What the upsampler needs from a backend."""

    name: str

    def complete(self, request: UpsampleRequest) -> str: ...


# -- OpenAI-compatible endpoint ------------------------------------------------------------------------------
class OpenAIBackend:
    """Any OpenAI-compatible chat endpoint; retries and per-prompt errors come from :class:`OpenAIChat`."""

    def __init__(self, base_url: str | None = None, model: str = "gpt-4", timeout_s: float = 60.0,
                 retries: int = 4, backoff_s: float = 1.0, api_key: str | None = None,
                 temperature: float | None = None, sleep: Callable[[float], None] | None = None) -> None:
        import time

        from recaption.upsample.chat import ChatConfig, OpenAIChat

        cfg = ChatConfig(base_url=base_url, model=model, api_key=api_key, timeout_s=timeout_s, retries=retries,
                         backoff_s=backoff_s, max_tokens=300, temperature=temperature)
        self.chat = OpenAIChat(cfg, sleep=sleep or time.sleep)
        self.name = f"openai:{model}@{base_url or 'default'}"

    def complete(self, request: UpsampleRequest) -> str:
        return self.chat.complete(request.messages)


# -- local transformers causal LM ----------------------------------------------------------------------------
def _plain_chat(messages: list[dict[str, Any]]) -> str:
    """Messages as plain text for a tokenizer without a chat template."""
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    return "\n\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in messages) + "\n\nAssistant:"


class TransformersBackend:
    """A local causal LM by hub name or folder; uses the tokenizer's chat template when it has one."""

    def __init__(self, name_or_path: str, device: str = "cpu", max_new_tokens: int = 160,
                 do_sample: bool = False, seed: int = 0) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(name_or_path)
            self.model = AutoModelForCausalLM.from_pretrained(name_or_path).eval().to(device)
        except OSError as e:
            raise FileNotFoundError(f"cannot load causal LM {name_or_path!r}: not a local checkpoint and not "
                                    f"reachable on the model hub ({e.__class__.__name__})") from e
        self.device, self.max_new_tokens, self.do_sample, self.seed = device, max_new_tokens, do_sample, seed
        self.name = f"transformers:{name_or_path}"

    def complete(self, request: UpsampleRequest) -> str:
        import torch

        if getattr(self.tok, "chat_template", None):
            ids = self.tok.apply_chat_template(request.messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)["input_ids"]
        else:
            ids = self.tok(_plain_chat(request.messages), return_tensors="pt")["input_ids"]
        limit = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", None)
        if limit and ids.shape[1] + self.max_new_tokens > limit:  # keep the end: the request is there
            ids = ids[:, -(limit - self.max_new_tokens):]
        torch.manual_seed(self.seed)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        with torch.no_grad():
            out = self.model.generate(ids.to(self.device), attention_mask=torch.ones_like(ids).to(self.device),
                                      max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                                      pad_token_id=pad)
        return self.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


# -- deterministic stand-in ----------------------------------------------------------------------------------
TEMPLATE_TAIL = ("The picture shows this in rich detail: the main subject in sharp focus near the centre, "
                 "soft natural light, clear true colours and a simple, uncluttered background.")


class TemplateBackend:
    """NOT a language model: wraps the prompt in a fixed descriptive sentence, deterministically.

    For tests and for checking a pipeline end to end without an LLM. A follow-up request is appended to the
    previous description as an explicit change ("... Changed: make the light red."), so that conversation
    plumbing can be checked too.
    """

    name = "template (deterministic stand-in, not an LLM)"

    def complete(self, request: UpsampleRequest) -> str:
        p = " ".join(request.prompt.split()).rstrip(".")
        if request.history:
            prev = request.history[-1][1]
            return f"{prev.rsplit(TEMPLATE_TAIL, 1)[0].strip()} Changed: {p}. {TEMPLATE_TAIL}"
        return f"{p}. {TEMPLATE_TAIL}"


# -- registry ------------------------------------------------------------------------------------------------
def _world(spec: str, **kw: Any) -> Backend:
    from recaption.upsample.world_lm import WorldLMBackend

    return WorldLMBackend(spec, **{k: v for k, v in kw.items() if k in ("device", "seed", "do_sample")})


def _openai(spec: str, **kw: Any) -> Backend:
    keep = ("model", "timeout_s", "retries", "backoff_s", "api_key", "temperature", "sleep")
    return OpenAIBackend(base_url=spec or None, **{k: v for k, v in kw.items() if k in keep and v is not None})


def _transformers(spec: str, **kw: Any) -> Backend:
    return TransformersBackend(spec, **{k: v for k, v in kw.items() if k in ("device", "seed", "do_sample")})


BACKENDS: dict[str, Callable[..., Backend]] = {
    "openai": _openai,
    "transformers": _transformers,
    "world": _world,
    "template": lambda spec, **kw: TemplateBackend(),
}


def resolve_spec(spec: str) -> tuple[str, str]:
    """``spec`` -> (registry key, argument): see the module docstring."""
    s = spec.strip()
    if s == "template":
        return "template", ""
    if s.startswith(("http://", "https://")):
        return "openai", s
    if s == "openai":
        return "openai", ""
    if s.startswith("openai:"):
        return "openai", ""  # model from the part after the colon; see load_backend
    if s.startswith("world:"):
        return "world", s[len("world:"):]
    if s.startswith("hf:"):
        return "transformers", s[len("hf:"):]
    if (Path(s) / "upsampler.json").is_file():
        return "world", s
    return "transformers", s


def load_backend(spec: str, **options: Any) -> Backend:
    """A backend from a spec (see the module docstring); ``options`` go to the backend that takes them."""
    key, arg = resolve_spec(spec)
    if spec.startswith("openai:") and not options.get("model"):
        options["model"] = spec.split(":", 1)[1]
    return BACKENDS[key](arg, **options)
