"""The shared optimizer factory: fused AdamW on CUDA, the default implementation elsewhere."""

import torch

from recaption.optim import adamw, adamw_options


def test_fused_only_on_cuda() -> None:
    assert adamw_options("cuda") == {"fused": True}
    assert adamw_options(torch.device("cuda", 0)) == {"fused": True}
    assert adamw_options("cpu") == {}


def test_adamw_on_cpu_keeps_the_default_and_the_arguments() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = adamw([p], "cpu", lr=0.1, weight_decay=0.0, betas=(0.9, 0.98))
    assert isinstance(opt, torch.optim.AdamW)
    assert not opt.defaults["fused"]
    assert opt.defaults["lr"] == 0.1 and opt.defaults["betas"] == (0.9, 0.98)
    p.grad = torch.ones(3)
    opt.step()
    assert torch.all(p < 1.0)  # it optimizes
