"""Bench: the t2i training step against a bare PyTorch loop, and the latent/text caches against re-encoding.

World sizes: 64 px images, VAE ``vae-world`` (8x: 8x8x4 latents), T5 ``t5-world`` (d_model 128, captions
up to ~110 tokens), U-Net ``unet-world`` (channels (32, 64, 64)), batch 64.

(a) seconds per optimizer step of ``recaption.t2i.train.train_t2i`` (cached latents + embeddings, blend draw,
    EMA, grad clipping, LR schedule: the real loop, timed by its ``on_step`` hook) over a bare loop
    (noise, forward, MSE, backward, AdamW) on the same U-Net config and a batch of the same shape.
    Must be <= 1.1.
(b) a step that decodes its batch's PNGs and re-encodes them with a frozen VAE and the captions with the
    frozen T5 (no grad) before the same training step, over the cached step. Must be >= 3. Timed for
    ``vae-world`` (DESIGN's CPU-budget VAE) and ``vae-world-large`` (the GPU world run's VAE).

The two sides of each ratio run interleaved (A B A B ...) and the per-step medians are compared, so
load from other jobs on the machine hits both alike. One torch thread by default: with two threads on a
loaded 2-core machine OpenMP spin-waits made a step 10x slower and the timings noise.
Usage: ``python bench/bench_t2i.py [--steps 15] [--rounds 3] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def world_records(n: int):
    """World records with truth descriptive captions in ``captions`` (so the bench needs no oracle flag)."""
    from recaption.world import truth_caption
    from recaption.world.dataset import generate_records

    recs = list(generate_records(n, seed=0))
    for r in recs:
        r.captions["descriptive"] = truth_caption(r, "descriptive")
    return recs


def bare_loop(unet, x0, emb, mask, acp, steps: int) -> list[float]:
    """Noise, forward, MSE, backward, AdamW: nothing else. Returns seconds per step."""
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        t = torch.randint(0, acp.shape[0], (x0.shape[0],))
        noise = torch.randn_like(x0)
        a, s = acp[t].sqrt().view(-1, 1, 1, 1), (1 - acp[t]).sqrt().view(-1, 1, 1, 1)
        pred = unet(a * x0 + s * noise, t, encoder_hidden_states=emb, encoder_attention_mask=mask).sample
        loss = torch.nn.functional.mse_loss(pred, a * noise - s * x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def ours(cfg, recs, steps: int) -> list[float]:
    """Seconds per optimizer step of the real training loop (first step of the call excluded)."""
    from recaption.t2i.train import train_t2i

    stamps = []
    train_t2i(dataclasses.replace(cfg, steps=steps + 2), records=recs,
              on_step=lambda s: stamps.append(time.perf_counter()))
    # the last step also checkpoints and exports before on_step: drop it; the first is warm-up
    return [b - a for a, b in zip(stamps[:-2], stamps[1:-1], strict=True)]


def reencode_loop(unet, vae, text, pngs, captions, acp, steps: int) -> list[float]:
    """The bare step preceded by what the cache avoids: decoding the batch's PNGs, encoding them with the
    frozen VAE and the captions with the frozen T5."""
    from recaption.t2i.data import decode_images

    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    sf = float(vae.config.scaling_factor)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with torch.no_grad():
            x0 = vae.encode(decode_images(pngs, 64)).latent_dist.sample() * sf
            emb, mask = text.encode(captions)
        t = torch.randint(0, acp.shape[0], (x0.shape[0],))
        noise = torch.randn_like(x0)
        a, s = acp[t].sqrt().view(-1, 1, 1, 1), (1 - acp[t]).sqrt().view(-1, 1, 1, 1)
        pred = unet(a * x0 + s * noise, t, encoder_hidden_states=emb, encoder_attention_mask=mask).sample
        loss = torch.nn.functional.mse_loss(pred, a * noise - s * x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15, help="timed steps per block")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved blocks per side")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--records", type=int, default=256)
    ap.add_argument("--reencode-vaes", default="vae-world,vae-world-large",
                    help="VAE presets to time the re-encoding step with (b)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable timings on a machine shared with other jobs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    from recaption.t2i.components import build_text_encoder, build_unet, build_vae
    from recaption.t2i.config import DiffusionConfig, T2ITrainConfig
    from recaption.t2i.diffusion import alphas_cumprod

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench_t2i_"))
    recs = world_records(args.records)
    vae = build_vae("vae-world")
    vae.register_to_config(scaling_factor=1.0)
    vae.save_pretrained(tmp / "vae")
    cfg = T2ITrainConfig(out=str(tmp / "run"), vae=str(tmp / "vae"), text_encoder="t5-world", text_pretrain_steps=0,
                         unet="unet-world", batch_size=args.batch, log_every=10_000, checkpoint_every=10_000,
                         sample_every=0, cache_dir=str(tmp / "cache"), keep_checkpoints=1)
    ours(cfg, recs, 1)  # fills the caches, as the first epoch of a real run would
    text = build_text_encoder(str(tmp / "run"))
    text.model.eval()
    captions = [r.captions["descriptive"] for r in recs[:args.batch]]
    emb, mask = text.encode(captions)
    pngs = [r.image for r in recs[:args.batch]]
    vaes = {name: build_vae(name).eval().requires_grad_(False) for name in args.reencode_vaes.split(",")}
    x0 = torch.randn(args.batch, 4, 8, 8)
    acp = alphas_cumprod(DiffusionConfig())
    unet = build_unet("unet-world", 4, 8, text.dim).train()

    t_ours, t_bare, t_reenc = [], [], {name: [] for name in vaes}
    for _ in range(args.rounds):
        t_bare += bare_loop(unet, x0, emb, mask, acp, args.steps)[1:]
        t_ours += ours(cfg, recs, args.steps)
        for name, v in vaes.items():
            t_reenc[name] += reencode_loop(unet, v, text, pngs, captions, acp, max(3, args.steps // 3))[1:]
    mo, mb = statistics.median(t_ours), statistics.median(t_bare)
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average {load:.2f}")
    print(f"world sizes: batch {args.batch}, latents 4x8x8, U-Net (32,64,64), text tokens {emb.shape[1]} x "
          f"{emb.shape[2]}")
    print(f"(a) train_t2i step (cached)       {mo * 1000:8.1f} ms  (median of {len(t_ours)})")
    print(f"    bare PyTorch loop             {mb * 1000:8.1f} ms  (median of {len(t_bare)})")
    print(f"    ratio ours / bare             {mo / mb:8.3f}   (must be <= 1.1)")
    for name, ts in t_reenc.items():
        mr = statistics.median(ts)
        n_par = sum(p.numel() for p in vaes[name].parameters()) / 1e6
        print(f"(b) re-encoding per step, {name} ({n_par:.1f}M params) + T5: {mr * 1000:8.1f} ms "
              f"(median of {len(ts)}); re-encode / cached = {mr / mo:.2f}  (must be >= 3)")


if __name__ == "__main__":
    main()
