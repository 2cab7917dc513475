"""Inverted images kept once per run: the refined inversion is the costliest step of stages 04-08 on real photographs
(E(x) plus 50 optimisation steps per image), so each image is inverted once and read back by every later stage,
`stylex explain` and the browser.

A store is one folder per identity: the weights that invert (generator, encoder, classifier), the inversion settings
and the LPIPS network. Images are keyed by their pixels, so a file given to `stylex explain` hits the inversion stage 04
made of the same dataset image. Batches are appended as part files (atomic, never rewritten), so an interrupted
inversion resumes, and nothing keys on the refined floats (a GPU refinement is not bit-reproducible).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from stylexlib.core.distributed import SINGLE, DistInfo
from stylexlib.core.io import torch_load, torch_save
from stylexlib.core.progress import tqdm

log = logging.getLogger(__name__)

STORE_DIR = "inversions"
COLUMNS = ("w", "c", "styles", "logits")  # the fields of stylespace.inversion.Inverted


def image_keys(images: Tensor) -> list[str]:
    """One key per image from its pixels: uint8 images and their exact [-1, 1] float versions share a key."""
    if images.is_floating_point():
        pixels = ((images.float() + 1) * 127.5).round().clamp(0, 255)
        if torch.allclose(pixels / 127.5 - 1, images.float(), atol=1e-6, rtol=0):
            images = pixels.to(torch.uint8)
    flat = images.detach().cpu().contiguous()
    return [hashlib.sha1(f"{image.dtype}{tuple(image.shape)}".encode() + image.numpy().tobytes()).hexdigest()[:20]
            for image in flat]


def tensor_bytes(tensor: Tensor) -> bytes:
    """A tensor's bits, in memory order of a contiguous copy on the CPU (what the digests here hash)."""
    return tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def weights_digest(*modules: nn.Module) -> str:
    """A digest of the modules' parameters and buffers (their names, shapes and bits)."""
    digest = hashlib.sha1()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor_bytes(tensor))
    return digest.hexdigest()[:16]


def store_identity(models, settings: dict) -> str:
    """The identity of a store for ``models`` (a StylexModels) inverting with ``settings``."""
    plain = {"weights": weights_digest(models.generator, models.encoder, models.classifier),
             "condition_on": models.cfg.model.condition_on, "lpips_net": models.cfg.model.lpips_net, **settings}
    return hashlib.sha1(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


class InversionStore:
    """Inversions (w, c, styles, logits per image) of one identity, in ``folder``, keyed by :func:`image_keys`."""

    def __init__(self, folder: str | Path, identity: str) -> None:
        self.identity = identity
        self.folder = Path(folder) / identity
        self.rows: dict[str, tuple[Tensor, ...]] = {}
        self._read_parts: set[str] = set()
        self.reload()

    def reload(self) -> None:
        """Read the part files not read yet (another stage or rank may have added some)."""
        if not self.folder.is_dir():
            return
        for part in sorted(self.folder.glob("part-*.pt")):
            if part.name in self._read_parts:
                continue
            state = torch_load(part)
            if state.get("identity") != self.identity:
                log.warning("ignoring %s: written for another inversion", part)
                continue
            for n, key in enumerate(state["keys"]):
                self.rows[key] = tuple(state[column][n] for column in COLUMNS)
            self._read_parts.add(part.name)

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, keys: list[str], columns: tuple[Tensor, ...]) -> None:
        """Keep the inversions ``columns`` (w, c, styles, logits; each (N, ...)) of the images ``keys``: a new part."""
        name = f"part-{os.getpid()}-{uuid.uuid4().hex[:8]}.pt"
        state = {"identity": self.identity, "keys": list(keys),
                 **{column: values.detach().cpu() for column, values in zip(COLUMNS, columns)}}
        torch_save(self.folder / name, state)
        self._read_parts.add(name)
        for n, key in enumerate(keys):
            self.rows[key] = tuple(values[n].detach().cpu() for values in columns)

    def invert(self, images: Tensor, compute: Callable[[Tensor], tuple[Tensor, ...]], batch_size: int = 64,
               dist: DistInfo = SINGLE, desc: str = "invert",
               progress: bool = True) -> tuple[Tensor, ...]:
        """The columns (w, c, styles, logits) of ``images``: the stored ones read, the others computed by ``compute``
        (images -> columns) batch by batch and stored as they finish. Under ``torch.distributed`` each rank computes
        every world_size-th missing image and all ranks return them all."""
        keys = image_keys(images)
        missing = sorted({key: n for n, key in enumerate(keys) if key not in self.rows}.values())
        mine = missing[dist.rank :: dist.world_size]
        if missing:
            log.info("inverting %d of %d images (%d stored)", len(missing), len(keys), len(keys) - len(missing))
        for start in tqdm(range(0, len(mine), batch_size), desc=desc, unit="batch",
                          disable=not (progress and mine and dist.is_main)):
            batch = mine[start : start + batch_size]
            self.add([keys[n] for n in batch], compute(images[batch]))
        if missing and dist.enabled:
            torch.distributed.barrier()
            self.reload()
        return tuple(torch.stack([self.rows[key][c] for key in keys]) if keys else torch.empty(0)
                     for c in range(len(COLUMNS)))
