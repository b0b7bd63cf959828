"""Prompt upsampling (paper section 4, Appendix C): LLM backends, conversation semantics, batch mode.

Light at import: torch, transformers and openai load only when a backend is built.
"""

from recaption.upsample.backends import (
    BACKENDS,
    Backend,
    OpenAIBackend,
    TemplateBackend,
    TransformersBackend,
    UpsampleError,
    UpsampleRequest,
    load_backend,
)
from recaption.upsample.core import (
    Conversation,
    Upsampler,
    UpsampleResult,
    load_upsampler,
    read_prompts,
    upsample_file,
)
from recaption.upsample.prompt import MAX_WORDS, MIN_WORDS, UpsamplePrompt, appendix_c, cut_to_words

__all__ = ["BACKENDS", "Backend", "Conversation", "MAX_WORDS", "MIN_WORDS", "OpenAIBackend", "TemplateBackend",
           "TransformersBackend", "UpsampleError", "UpsamplePrompt", "UpsampleRequest", "UpsampleResult",
           "Upsampler", "appendix_c", "cut_to_words", "load_backend", "load_upsampler", "read_prompts",
           "upsample_file"]
