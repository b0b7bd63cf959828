"""Training state on disk: exact-resume checkpoints, the exported model directory, and the run's logs.

A checkpoint ``out/checkpoints/step-0000100/`` holds the raw U-Net (diffusers layout), the trainable text
encoder's state dict when it is trained jointly, and ``state.pt``: optimizer, LR schedule, EMA, blend counts, step,
and every RNG state (python, numpy, torch, cuda) of each process. ``out/checkpoints/latest`` names the newest.
The exported model (``out/unet`` with EMA weights, ``out/vae``, ``out/text_encoder``, ``out/tokenizer``,
``out/scheduler``, ``out/run_config.json``) loads with each library's ``from_pretrained``.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """Every global RNG state of this process."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(out: str | Path, step: int) -> Path:
    """Where checkpoint ``step`` of run ``out`` lives (``out/checkpoints/step-NNNNNNN``)."""
    return Path(out) / "checkpoints" / f"step-{int(step):07d}"


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    marker = Path(out) / "checkpoints" / "latest"
    if not marker.exists():
        return None
    path = Path(out) / "checkpoints" / marker.read_text().strip()
    return path if (path / "state.pt").exists() else None


def save_checkpoint(out: Path, step: int, acc, unet, text_model, state: dict[str, Any], keep: int,
                    ema: Any = None) -> Path:
    """Write checkpoint ``step`` (all processes call this; the main one writes models and state).

    With ``ema`` (a diffusers EMAModel of ``unet``) the EMA weights are also written as ``unet_ema/`` in
    diffusers layout, as diffusers' own training scripts do: each checkpoint is then a model one can sample
    from (``T2IPipeline.from_pretrained(run, checkpoint=step)``), which is what CLIP-score-against-step
    curves need. The training weights are untouched (store, copy, save, restore)."""
    ckpt = checkpoint_dir(out, step)
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), ckpt / f"rng-{acc.process_index}.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        raw = acc.unwrap_model(unet)
        raw.save_pretrained(ckpt / "unet")
        if ema is not None:
            ema.store(raw.parameters())
            ema.copy_to(raw.parameters())
            raw.save_pretrained(ckpt / "unet_ema")
            ema.restore(raw.parameters())
        if text_model is not None:  # raw state dict: keeps tied embeddings exact
            torch.save(acc.unwrap_model(text_model).state_dict(), ckpt / "text_encoder.pt")
        torch.save({"step": step, **state}, ckpt / "state.pt")  # written last: marks the checkpoint complete
        (out / "checkpoints" / "latest").write_text(ckpt.name + "\n")
        old = sorted(p for p in (out / "checkpoints").glob("step-*") if p.is_dir() and p != ckpt)
        for p in old[:max(0, len(old) - keep + 1)]:
            shutil.rmtree(p, ignore_errors=True)
        log.info("checkpoint %s", ckpt)
    acc.wait_for_everyone()
    return ckpt


def load_checkpoint(ckpt: Path, acc, unet, text_model) -> dict[str, Any]:
    """Load model weights and this process's RNG states from ``ckpt``; returns the rest of ``state.pt``."""
    from safetensors.torch import load_file

    acc.unwrap_model(unet).load_state_dict(load_file(str(ckpt / "unet" / "diffusion_pytorch_model.safetensors")))
    if text_model is not None:
        acc.unwrap_model(text_model).load_state_dict(torch.load(ckpt / "text_encoder.pt", map_location="cpu",
                                                                weights_only=True))
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
    set_rng_state(torch.load(ckpt / f"rng-{acc.process_index}.pt", map_location="cpu", weights_only=False))
    log.info("resumed from %s (step %d)", ckpt, state["step"])
    return state


class RunLog:
    """Loss curves to ``out/logs/train.csv`` and TensorBoard (``out/logs/tb``); main process only."""

    def __init__(self, out: Path, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.path = out / "logs" / "train.csv"
        self.rows: list[dict[str, float]] = []
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # keep the rows up to the step we resume from
            with self.path.open() as f:
                self.rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= resume_step]
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "logs" / "tb"), purge_step=resume_step + 1 if resume_step else None)
        except ImportError:  # tensorboard is optional
            log.warning("tensorboard not installed; loss curve goes to CSV only")

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.rows.append({"step": step, **values})
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        log.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in values.items()))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def save_grid(images: list, path: Path, ncols: int = 8) -> None:
    """Tile PIL images into one PNG."""
    from PIL import Image

    if not images:
        return
    w, h = images[0].size
    rows = (len(images) + ncols - 1) // ncols
    grid = Image.new("RGB", (w * min(ncols, len(images)), h * rows))
    for i, img in enumerate(images):
        grid.paste(img, ((i % ncols) * w, (i // ncols) * h))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
