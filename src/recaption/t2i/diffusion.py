"""The diffusion objective and samplers, kept apart from the network (k-diffusion / EDM style).

- :func:`diffusion_loss`: the DDPM training loss (Ho et al., 2020) with epsilon- or v-prediction
  (Salimans & Ho, 2022) on a discrete schedule (cosine by default: Nichol & Dhariwal, 2021).
- Samplers: pure ``@torch.no_grad()`` functions of one signature
  ``sampler(denoiser, shape, *, diffusion, steps, generator, device, dtype) -> x0`` where ``denoiser(x, t)``
  returns the network's prediction; the step rules are diffusers' schedulers: DDIM (Song et al., 2021),
  DPM-Solver++(2M) (Lu et al., 2022) and Euler (Karras et al., 2022, deterministic).
- :func:`guided_denoiser`: classifier-free guidance (Ho & Salimans, 2022).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from recaption.t2i.config import DiffusionConfig

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None


def alphas_cumprod(diffusion: DiffusionConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """The schedule's cumulative alpha products (T,), float32 on ``device`` (diffusers' definition)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(**diffusion.scheduler_config())
    return sched.alphas_cumprod.to(device=device, dtype=torch.float32)


def diffusion_loss(unet: torch.nn.Module, latents: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor,
                   acp: torch.Tensor, prediction_type: str, generator: torch.Generator) -> torch.Tensor:
    """Mean-squared error of the U-Net's prediction at a uniformly drawn timestep.

    latents (B, C, h, w) clean scaled latents; emb (B, L, D) text tokens; mask (B, L); acp (T,).
    """
    b = latents.shape[0]
    t = torch.randint(0, acp.shape[0], (b,), device=latents.device, generator=generator)
    noise = torch.randn(latents.shape, device=latents.device, dtype=latents.dtype, generator=generator)
    a = acp[t].sqrt().view(b, 1, 1, 1)  # (B, 1, 1, 1)
    s = (1 - acp[t]).sqrt().view(b, 1, 1, 1)
    x_t = a * latents + s * noise
    target = noise if prediction_type == "epsilon" else a * noise - s * latents  # v = a*eps - s*x0
    pred = unet(x_t, t, encoder_hidden_states=emb, encoder_attention_mask=mask).sample
    return F.mse_loss(pred.float(), target.float())


def guided_denoiser(unet: torch.nn.Module, cond: tuple[torch.Tensor, torch.Tensor],
                    uncond: tuple[torch.Tensor, torch.Tensor], guidance: float) -> Denoiser:
    """``denoiser(x, t)`` = uncond + guidance * (cond - uncond); one batched U-Net call per step.

    cond / uncond are (embeddings (B, L, D), mask (B, L)); guidance 1 skips the unconditional pass.
    """
    if guidance == 1.0:
        emb, mask = cond
        return lambda x, t: unet(x, t, encoder_hidden_states=emb, encoder_attention_mask=mask).sample
    length = max(cond[0].shape[1], uncond[0].shape[1])
    emb = torch.cat([F.pad(uncond[0], (0, 0, 0, length - uncond[0].shape[1])),
                     F.pad(cond[0], (0, 0, 0, length - cond[0].shape[1]))])  # (2B, L, D)
    mask = torch.cat([F.pad(uncond[1], (0, length - uncond[1].shape[1])),
                      F.pad(cond[1], (0, length - cond[1].shape[1]))])  # (2B, L)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=emb, encoder_attention_mask=mask).sample
        u, c = out.chunk(2)
        return u + guidance * (c - u)

    return denoise


def _noise(shape: Sequence[int], generator: Generators, device, dtype) -> torch.Tensor:
    from diffusers.utils.torch_utils import randn_tensor

    gen = list(generator) if isinstance(generator, (list, tuple)) else generator
    return randn_tensor(tuple(shape), generator=gen, device=torch.device(device), dtype=dtype)


def _run_scheduler(scheduler_cls_name: str, extra: dict, denoiser: Denoiser, shape: Sequence[int],
                   diffusion: DiffusionConfig, steps: int, generator: Generators, device, dtype) -> torch.Tensor:
    import diffusers

    sched = getattr(diffusers, scheduler_cls_name)(**diffusion.scheduler_config(), **extra)
    sched.set_timesteps(steps, device=device)
    x = _noise(shape, generator, device, dtype) * sched.init_noise_sigma
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        out = denoiser(inp, t.expand(x.shape[0]).to(device))
        x = sched.step(out, t, x, return_dict=True).prev_sample
    return x


@torch.no_grad()
def sample_ddim(denoiser: Denoiser, shape: Sequence[int], *, diffusion: DiffusionConfig, steps: int,
                generator: Generators, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """DDIM, eta = 0 (Song et al., 2021): deterministic given the starting noise."""
    return _run_scheduler("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}, denoiser, shape,
                          diffusion, steps, generator, device, dtype)


@torch.no_grad()
def sample_dpm(denoiser: Denoiser, shape: Sequence[int], *, diffusion: DiffusionConfig, steps: int,
               generator: Generators, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al., 2022), multistep second order; good in 15-25 steps."""
    return _run_scheduler("DPMSolverMultistepScheduler",
                          {"algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"},
                          denoiser, shape, diffusion, steps, generator, device, dtype)


@torch.no_grad()
def sample_euler(denoiser: Denoiser, shape: Sequence[int], *, diffusion: DiffusionConfig, steps: int,
                 generator: Generators, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Euler's method on the probability-flow ODE in sigma space (Karras et al., 2022, Algorithm 1)."""
    return _run_scheduler("EulerDiscreteScheduler", {}, denoiser, shape, diffusion, steps, generator, device,
                          dtype)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ddim": sample_ddim, "dpm": sample_dpm, "euler": sample_euler}
