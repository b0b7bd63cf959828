"""The optimizer every trainer here uses: AdamW, fused into one kernel on CUDA.

A world-scale model's step on a GPU is bound by kernel launches, not arithmetic: on an H100 a ``unet-world-large``
step at batch 256 kept the GPU busy ~20 ms of 146 ms, and the unfused AdamW step alone cost ~15 ms of host time
(bench/RESULTS.md, "t2i: the second lent GPU", call 2). ``fused=True`` does the update in one launch. On the CPU
the default (foreach) implementation stays, so CPU runs and their exact-resume tests are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def adamw_options(device: str | torch.device) -> dict[str, Any]:
    """Extra ``torch.optim.AdamW`` keyword arguments for parameters on ``device``."""
    return {"fused": True} if torch.device(device).type == "cuda" else {}


def adamw(params: Iterable[Any], device: str | torch.device, **kwargs: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, **kwargs)``, fused when ``device`` is a CUDA device."""
    return torch.optim.AdamW(params, **kwargs, **adamw_options(device))
