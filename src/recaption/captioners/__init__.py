"""Captioners behind one protocol: ``caption(images, mode) -> list[str]``.

``mode`` is ``"short"`` (SSC) or ``"descriptive"`` (DSC). Implementations: the clip-prefix captioner
(ours, trainable), transformers vision-language models, OpenAI-compatible chat endpoints.

:func:`load_captioner` takes one spec string:

============================================  ==========================================================
spec                                          captioner
============================================  ==========================================================
``DIR`` (holds ``captioner.json``)            a clip-prefix checkpoint (trained for one stage)
``DIR`` (holds ``short/`` + ``descriptive/``) clip-prefix checkpoints, each mode routed to its own
``clip-prefix:DIR``                           the same, explicitly
``hf:NAME_OR_PATH``                           a transformers VLM (AutoModelForImageTextToText)
``DIR`` (a transformers checkpoint)           the same, detected by its ``config.json``
``openai:MODEL@BASE_URL``                     an OpenAI-compatible endpoint, e.g.
                                              ``openai:qwen2-vl@http://localhost:8000/v1``
``openai:MODEL``                              OpenAI itself (``OPENAI_API_KEY`` from the environment)
``http(s)://HOST/v1#MODEL``                   an endpoint by URL; without ``#MODEL`` its first listed model
============================================  ==========================================================
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from recaption.captioners.base import MODES, Captioner, CaptionerError


def _clip_prefix(target: str, device: str, dtype: str | None, **kw: Any) -> Captioner:
    from recaption.captioners.clip_prefix import load_clip_prefix_dir

    return load_clip_prefix_dir(target, device=device, dtype=dtype)


def _hf(target: str, device: str, dtype: str | None, **kw: Any) -> Captioner:
    from recaption.captioners.hf_vlm import HFVLMCaptioner

    return HFVLMCaptioner(target, device=device, dtype=dtype, **kw)


def _openai(target: str, device: str, dtype: str | None, **kw: Any) -> Captioner:
    from recaption.captioners.openai_api import OpenAICaptioner

    model, _, base_url = target.partition("@")
    if not model:
        raise ValueError(f"openai spec needs a model: openai:MODEL[@BASE_URL], got 'openai:{target}'")
    return OpenAICaptioner(model, base_url=base_url or None, **kw)


def _url(target: str, device: str, dtype: str | None, **kw: Any) -> Captioner:
    from recaption.captioners.openai_api import OpenAICaptioner

    base_url, _, model = target.partition("#")
    if not model:
        import openai

        try:
            models = openai.OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY") or "none",
                                   timeout=10, max_retries=1).models.list().data
        except openai.OpenAIError as e:
            raise CaptionerError(f"cannot list the models of {base_url} (name one as {base_url}#MODEL): {e}") from e
        if not models:
            raise CaptionerError(f"{base_url} lists no models; name one as {base_url}#MODEL")
        model = models[0].id
    return OpenAICaptioner(model, base_url=base_url, **kw)


REGISTRY: dict[str, Callable[..., Captioner]] = {
    "clip-prefix": _clip_prefix,
    "hf": _hf,
    "openai": _openai,
}
"""Spec scheme -> factory(target, device, dtype, **options)."""


def load_captioner(spec: str, device: str = "cpu", dtype: str | None = None, **options: Any) -> Captioner:
    """A captioner from a spec string (see the table in this module's docstring)."""
    if spec.startswith(("http://", "https://")):
        return _url(spec, device, dtype, **options)
    scheme, sep, target = spec.partition(":")
    if sep and scheme in REGISTRY:
        return REGISTRY[scheme](target, device, dtype, **options)
    if os.path.isdir(spec):
        from recaption.captioners.clip_prefix import CONFIG_NAME

        if os.path.isfile(os.path.join(spec, CONFIG_NAME)) or any(
                os.path.isfile(os.path.join(spec, m, CONFIG_NAME)) for m in MODES):
            return _clip_prefix(spec, device, dtype)
        if os.path.isfile(os.path.join(spec, "config.json")):
            return _hf(spec, device, dtype, **options)
        raise FileNotFoundError(f"{spec!r} is neither a clip-prefix checkpoint (captioner.json) nor a "
                                f"transformers checkpoint (config.json)")
    raise FileNotFoundError(f"captioner {spec!r}: not a directory and not a known spec; use DIR, hf:NAME, "
                            f"openai:MODEL@BASE_URL or http(s)://HOST/v1#MODEL")


__all__ = ["MODES", "REGISTRY", "Captioner", "CaptionerError", "load_captioner"]
