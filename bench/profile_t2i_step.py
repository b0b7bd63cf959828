"""Where a U-Net training step's time goes (issue 5): per-step wall time of ``train_t2i`` at a given size, with
the text encoder frozen and cached (``pretrain``) or trained along (``joint``), and a torch.profiler table.

Step time = (wall of a 20+N-step run - wall of a 20-step run) / N, so set-up, caching and export cancel out.
On the first lent GPU a ``unet-world-large`` step at batch 256 in bf16 took about 170 ms, which looked slow for
8x8 latents; this script says why. CPU smoke test (figures meaningless):

    python bench/profile_t2i_step.py --quick
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import torch


def run(cfg, steps: int, on_step=None) -> float:
    """Wall seconds of a fresh ``steps``-step run of ``cfg`` (its out folder removed first)."""
    import dataclasses

    from recaption.t2i.train import train_t2i

    c = dataclasses.replace(cfg, steps=steps, log_every=steps, checkpoint_every=10**9, sample_every=0)
    shutil.rmtree(c.out, ignore_errors=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    train_t2i(c, on_step=on_step)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vae", default="", help="a trained VAE folder (default: a fresh vae-world, untrained)")
    ap.add_argument("--out", default="/tmp/profile_t2i")
    ap.add_argument("--n", type=int, default=4000, help="world scenes")
    ap.add_argument("--unet", default="unet-world-large")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--modes", default="pretrain,joint")
    ap.add_argument("--profile-steps", type=int, default=10, help="steps of the torch.profiler run (0: none)")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: tiny sizes")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from recaption.t2i.config import VAE_SIZES, DiffusionConfig, T2ITrainConfig
    from recaption.t2i.vae import new_vae
    from recaption.world.dataset import WorldConfig, write_dataset

    if args.quick:
        args.n, args.unet, args.batch, args.steps, args.profile_steps = 300, "unet-tiny", 16, 4, 2
    cuda = torch.cuda.is_available()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    data = out / "data"
    if not data.exists():
        write_dataset(str(data), args.n, WorldConfig(seed=0), format="wds", shard_size=1000, workers=4,
                      progress=False)
    vae = args.vae
    if not vae:
        vae = str(out / "vae")
        new_vae(VAE_SIZES["vae-world"]).save_pretrained(vae)
    res: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "unet": args.unet, "batch": args.batch}
    for mode in args.modes.split(","):
        cfg = T2ITrainConfig(data=str(data), out=str(out / f"run_{mode}"), blend="descriptive=0.95,alt=0.05",
                             captions_from_truth=True, vae=vae, text_encoder="t5-world", text_mode=mode,
                             text_pretrain_steps=10, unet=args.unet,
                             diffusion=DiffusionConfig(prediction_type="v_prediction"), batch_size=args.batch,
                             lr=3e-4, warmup_steps=5, mixed_precision="bf16" if cuda else "no",
                             cache_dir=str(out / "cache"), seed=0)
        run(cfg, 2)  # fills the latent (and, for pretrain, text-embedding) caches
        base = run(cfg, 20)
        full = run(cfg, 20 + args.steps)
        res[f"{mode}_ms_per_step"] = round(1000 * (full - base) / args.steps, 1)
        res[f"{mode}_run20_s"] = round(base, 1)
        print(f"{mode}: {res[f'{mode}_ms_per_step']} ms a step ({args.unet}, batch {args.batch})", flush=True)
        if args.profile_steps:
            from torch.profiler import ProfilerActivity, profile, schedule

            # steps only: the first step (with set-up) is skipped, the second warms up, export comes after
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            sched = schedule(wait=1, warmup=1, active=args.profile_steps, repeat=1)
            with profile(activities=acts, schedule=sched) as prof:
                run(cfg, args.profile_steps + 3, on_step=lambda _step: prof.step())
            key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=50))
            if cuda:
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12,
                                                max_name_column_width=50))
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
