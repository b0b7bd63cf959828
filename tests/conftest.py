"""Test-wide settings: one torch thread (on a loaded 2-core machine two threads made steps 10-20x slower)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the core tests run without torch
    pass
