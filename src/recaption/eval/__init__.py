"""Evaluation: CLIP score, DrawBench with a VLM judge (Appendix D), T2I-CompBench BLIP-VQA, the world suite.

- :mod:`.clipscore` 100 x cosine (torchmetrics' definition) against several caption fields, truncation counted;
- :mod:`.drawbench` aggregate published or own verdicts per category with bootstrap CIs; judge images with an
  OpenAI-compatible vision endpoint or a local transformers VLM;
- :mod:`.compbench` T2I-CompBench disentangled BLIP-VQA (colour, shape, texture);
- :mod:`.world_eval` the oracle judge over the world prompt suite, guidance chosen on val, applied to test;
- :mod:`.report` JSON, markdown tables, plots (per-category bars, CLIP score vs step) and image grids;
- :mod:`.stats` cluster bootstrap over prompts and half-up rounding.

Submodules load torch/transformers only inside the functions that need them.
"""

from recaption.eval.stats import Share, bootstrap_mean, bootstrap_share, fmt_pct, round_half_up

__all__ = ["Share", "bootstrap_mean", "bootstrap_share", "fmt_pct", "round_half_up"]
