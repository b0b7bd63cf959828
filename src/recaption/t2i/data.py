"""Training data for latent diffusion: records -> a caption table, cached VAE latents, cached text embeddings.

Frozen encoders never run twice on the same input: each image is encoded by the VAE once (the latent
distribution's mean and std are cached in a file keyed by the dataset's content and the VAE's weights,
and a fresh latent is drawn from it at each step), and each distinct caption is encoded by a frozen
text encoder once (a file keyed by the caption set and the encoder's weights).
"""

from __future__ import annotations

import hashlib
import io as _io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recaption.records import ORIGINAL, Record
from recaption.t2i.blend import EMPTY

log = logging.getLogger(__name__)

_PERM_TAG = 0xDA7A


@dataclass
class CaptionTable:
    """Distinct caption texts (``texts[0]`` is the empty caption) and, per record, the id of each column's
    caption (-1 where the record has none)."""

    texts: list[str]
    ids: np.ndarray  # (N, len(columns)) int64
    columns: tuple[str, ...]


@dataclass
class T2IData:
    """Records reduced to what training needs: keys, encoded images, the caption table, a content hash."""

    keys: list[str]
    images: list[bytes]
    table: CaptionTable
    fingerprint: str

    def __len__(self) -> int:
        return len(self.keys)


def default_cache_dir() -> Path:
    return Path(os.environ.get("RECAPTION_CACHE", Path.home() / ".cache" / "recaption")) / "t2i"


def read_data(data: str | Iterable[Record], columns: Sequence[str], captions_from_truth: bool = False,
              limit: int | None = None) -> T2IData:
    """Read records (a path for :func:`recaption.io.read_records`, or Record objects) into a :class:`T2IData`.

    ``captions_from_truth`` reads every non-original column from the world's true captions
    (:func:`recaption.world.truth_caption`): an oracle-caption upper bound, never a real system.
    """
    if isinstance(data, (str, os.PathLike)):
        from recaption.io import read_records

        records: Iterable[Record] = read_records(str(data))
    else:
        records = data
    if captions_from_truth:
        from recaption.world import truth_caption
    text_id: dict[str, int] = {EMPTY: 0}
    keys, images, rows = [], [], []
    h = hashlib.sha256()
    skipped = 0
    for rec in records:
        if limit is not None and len(keys) >= limit:
            break
        if rec.image is None or rec.error:
            skipped += 1
            continue
        row = []
        for col in columns:
            if captions_from_truth and col != ORIGINAL:
                text = truth_caption(rec, col)
            else:
                text = rec.captions.get(col)
            row.append(-1 if text is None else text_id.setdefault(text, len(text_id)))
        keys.append(rec.key)
        images.append(rec.image)
        rows.append(row)
        h.update(rec.key.encode() + b"\0" + hashlib.sha256(rec.image).digest())
    if skipped:
        log.warning("skipped %d records without an image", skipped)
    if not keys:
        raise ValueError(f"no usable records in {data if isinstance(data, str) else 'the given records'}")
    ids = np.asarray(rows, dtype=np.int64).reshape(len(keys), len(columns))
    missing = {c: int((ids[:, j] < 0).sum()) for j, c in enumerate(columns) if (ids[:, j] < 0).any()}
    if missing:
        log.warning("records missing a caption field (these fall back to %r when drawn): %s", ORIGINAL, missing)
    texts = sorted(text_id, key=text_id.get)
    return T2IData(keys, images, CaptionTable(texts, ids, tuple(columns)), h.hexdigest())


def decode_images(images: Sequence[bytes], size: int) -> torch.Tensor:
    """Encoded images -> (B, 3, size, size) float in [-1, 1] (resized with bicubic if needed)."""
    from PIL import Image

    arrs = []
    for b in images:
        img = Image.open(_io.BytesIO(b)).convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        arrs.append(np.asarray(img))
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float()  # (B, 3, H, W)
    return x / 127.5 - 1.0


# --------------------------------------------------------------------------------------------------
# caches


@torch.no_grad()
def encode_latent_stats(vae, images: Sequence[bytes], size: int, device, batch_size: int = 64) -> torch.Tensor:
    """Scaled latent distribution (N, 2, C, h, w): [mean, std] after the VAE's shift and scaling factor."""
    sf = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    dtype = next(vae.parameters()).dtype
    out = []
    for i in range(0, len(images), batch_size):
        x = decode_images(images[i:i + batch_size], size).to(device=device, dtype=dtype)
        dist = vae.encode(x).latent_dist
        out.append(torch.stack([(dist.mean - shift) * sf, dist.std * sf], 1).float().cpu())
    return torch.cat(out)


def cached_latents(data: T2IData, vae, vae_fingerprint: str, size: int, cache_dir: str | Path, device,
                   batch_size: int = 64) -> torch.Tensor:
    """(N, 2, C, h, w) latent stats from ``cache_dir`` if this dataset + VAE + size was encoded before."""
    key = hashlib.sha256(f"{data.fingerprint}|{vae_fingerprint}|{size}".encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"latents-{key}.pt"
    if path.exists():
        log.info("VAE latents from cache %s", path)
        return torch.load(path, map_location="cpu", weights_only=True)
    log.info("encoding %d images with the VAE once (cache %s)", len(data), path)
    stats = encode_latent_stats(vae, data.images, size, device, batch_size)
    _atomic_save(stats, path)
    return stats


def cached_text(texts: Sequence[str], text_encoder, encoder_fingerprint: str, cache_dir: str | Path, device,
                batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (U, L, D) and masks (U, L) of every distinct caption, from cache or encoded once."""
    h = hashlib.sha256(f"{encoder_fingerprint}|{text_encoder.max_length}".encode())
    for t in texts:
        h.update(t.encode() + b"\0")
    path = Path(cache_dir) / f"text-{h.hexdigest()[:24]}.pt"
    if path.exists():
        log.info("text embeddings from cache %s", path)
        d = torch.load(path, map_location="cpu", weights_only=True)
        return d["emb"], d["mask"]
    log.info("encoding %d distinct captions with the frozen text encoder once (cache %s)", len(texts), path)
    emb, mask = text_encoder.encode(list(texts), device=device, batch_size=batch_size)
    emb, mask = emb.float().cpu(), mask.cpu()
    _atomic_save({"emb": emb, "mask": mask}, path)
    return emb, mask


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# batches


class BatchIndexer:
    """Which records micro-step ``m`` trains on: epochs of seeded permutations, read as one stream.

    Counter-based like the blend: a function of (seed, m, rank, world size) only, so resume needs no state.
    """

    def __init__(self, n: int, batch_size: int, seed: int, world_size: int = 1):
        self.n, self.batch_size, self.seed, self.world_size = n, batch_size, seed, world_size
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = np.random.default_rng([self.seed, _PERM_TAG, epoch]).permutation(self.n)
        return self._perms[epoch]

    def __call__(self, step: int, rank: int = 0) -> np.ndarray:
        start = (step * self.world_size + rank) * self.batch_size
        pos = np.arange(start, start + self.batch_size)
        epochs, within = pos // self.n, pos % self.n
        out = np.empty(self.batch_size, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(int(e))[within[sel]]
        return out


def step_generator(seed: int, step: int, rank: int, device) -> torch.Generator:
    """A torch generator for micro-step ``step`` on ``rank`` (noise, timesteps, latent draws)."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + int(step) * 7919 + int(rank)) % (2**63 - 1))
    return g
