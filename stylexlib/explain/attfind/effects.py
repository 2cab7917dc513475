"""AttFind's core (Lang et al., ICCV 2021, Alg. 1): the classifier's output on every single-coordinate StyleSpace edit.

For every image, every searched coordinate and both directions, the coordinate is set to a shifted value
(the dataset min / max, or +- k std) and the classifier is run on the re-rendered image. The fast path
exploits the explicit StyleSpace: an edit in layer ``l`` leaves every activation before ``l`` unchanged, so
the prefix is computed once per image and batches of edits go through the suffix and the classifier only.
The screened mode (:mod:`.screen`) evaluates exactly only the edits first-order estimates choose.

Effects hold the classifier's *logits* on every edit; scores toward a class are derived from them, as
probability changes or as one-vs-rest log-odds changes (``output``).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from stylexlib.core.config import AttFindConfig
from stylexlib.core.distributed import SINGLE, DistInfo, gather_objects
from stylexlib.core.io import torch_load, torch_save
from stylexlib.core.progress import tqdm
from stylexlib.gan.generator import Generator, SynthesisState
from stylexlib.gan.models import StylexModels
from stylexlib.stylespace.accelerate import inference_copies
from stylexlib.stylespace.inversion import invert

log = logging.getLogger(__name__)

SHIFT_MODES = ("minmax", "std")
OUTPUTS = ("probs", "logits")
DIRECTIONS = ("down", "up")  # index 0: towards the minimum / minus; 1: towards the maximum / plus

# ---------------------------------------------------------------------------- StyleSpace statistics
@dataclass
class StyleStats:
    """Per-coordinate StyleSpace statistics over a set of images (each a (S,) tensor)."""

    minimum: Tensor
    maximum: Tensor
    mean: Tensor
    std: Tensor
    count: int

    @classmethod
    def of(cls, styles: Tensor) -> StyleStats:
        """Statistics of styles (N, S)."""
        styles = styles.float()
        return cls(styles.amin(0), styles.amax(0), styles.mean(0), styles.std(0, unbiased=len(styles) > 1), len(styles))

    def covering(self, styles: Tensor) -> StyleStats:
        """These statistics with the min / max widened to cover ``styles`` (N, S): the styles AttFind edits, which a
        per-image refinement moves beyond the encoder's range (else "up" can land below an image's own value)."""
        styles = styles.float()
        return StyleStats(torch.minimum(self.minimum, styles.amin(0)), torch.maximum(self.maximum, styles.amax(0)),
                          self.mean, self.std, self.count)

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> StyleStats:
        return cls(**state)


def style_statistics(models: StylexModels, images: Tensor, batch_size: int = 256) -> StyleStats:
    """StyleSpace min / max / mean / std of the ``images`` as the encoder alone places them (thousands of images: no
    per-image refinement)."""
    return StyleStats.of(invert(models, images, batch_size, refine=False).styles)


def shift_targets(styles: Tensor, stats: StyleStats, mode: str = "minmax", shift_std: float = 2.0) -> Tensor:
    """The value each coordinate is set to, per direction: (2, N, S); [0] down, [1] up.

    "minmax": the dataset minimum / maximum (the paper); "std": the image's value -/+ ``shift_std`` std.
    """
    if mode == "minmax":
        return torch.stack([stats.minimum.expand_as(styles), stats.maximum.expand_as(styles)]).clone()
    if mode == "std":
        delta = shift_std * stats.std
        return torch.stack([styles - delta, styles + delta])
    raise ValueError(f"attfind.shift must be one of {SHIFT_MODES}, got '{mode}'")


def searched_coordinates(generator: Generator, include_torgb: bool) -> Tensor:
    """Flat indices of the coordinates AttFind tries (toRGB layers included or not)."""
    if include_torgb:
        return torch.arange(generator.style_dim)
    return generator.style_index.exclude_torgb_mask().nonzero().flatten()


# ---------------------------------------------------------------------------- effects of every edit
def single_edits(styles: Tensor, targets: Tensor, coords: Tensor) -> Tensor:
    """Copies of one image's styles (1, S), each with one coordinate set to its target: (2K, S), order (coord, dir).

    ``targets`` is that image's (2, S) slice of :func:`shift_targets`.
    """
    count, device = len(coords), styles.device
    edits = styles.expand(2 * count, -1).clone()
    rows = torch.arange(2 * count, device=device)
    columns = coords.to(device).repeat_interleave(2)
    edits[rows, columns] = targets.to(device)[torch.arange(2, device=device).repeat(count), columns]
    return edits


@torch.no_grad()
def edited_logits_fast(generator: Generator, classifier: nn.Module, styles: Tensor, targets: Tensor, coords: Tensor,
                       batch_size: int = 256, only: Tensor | None = None, num_outputs: int | None = None,
                       autocast: torch.dtype | None = None) -> Tensor:
    """Logits (N, K, 2, C) of every single-coordinate edit: prefix cached per layer, edits batched through the suffix.

    ``only`` (N, K, 2) bool restricts the work to those edits (screening); the others are NaN. ``classifier`` may be
    any image head with ``num_outputs`` outputs (default: the generator's number of classes). ``autocast``: a reduced
    precision for the suffix and the classifier (bf16 on a GPU, :func:`search_precision`); the logits are kept on the
    device until an image is done.
    """
    device = next(generator.parameters()).device
    width = num_outputs or generator.num_classes
    layer_of = generator.style_index.layer_ids()[coords].to(device)
    coords = coords.to(device)
    results: list[Tensor] = []
    for n in range(len(styles)):
        s = styles[n : n + 1].to(device)
        t = targets[:, n].to(device)
        per_image = torch.full((len(coords), 2, width), float("nan"), device=device)
        wanted_all = (only[n].to(device) if only is not None
                      else torch.ones(len(coords), 2, dtype=torch.bool, device=device))
        for layer in torch.unique(layer_of).tolist():
            positions = (layer_of == layer).nonzero().flatten()
            wanted = wanted_all[positions].flatten()
            if only is not None and not wanted.any():
                continue
            state = generator.synthesize_prefix(s, layer)
            edits = single_edits(s, t, coords[positions])[wanted]
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                logits = torch.cat([
                    classifier(generator.synthesize_from(_materialise(state, len(chunk)), chunk, layer)).float()
                    for chunk in edits.split(batch_size)
                ])
            block = per_image[positions].view(-1, width)  # rows in (coord, direction) order
            block[wanted] = logits
            per_image[positions] = block.view(len(positions), 2, -1)
        results.append(per_image.cpu())
    return torch.stack(results)


@torch.no_grad()
def edit_batch_size(generator: Generator, classifier: nn.Module, requested: int = 0, memory_fraction: float = 0.5,
                    probe: int = 8) -> int:
    """Edits per pass: ``requested`` when > 0; else on a GPU as many as fit in ``memory_fraction`` of its free memory
    (measured on a ``probe`` batch of whole renders), and 64 on a CPU (32-128 run fastest there)."""
    device = next(generator.parameters()).device
    if requested > 0:
        return requested
    if device.type != "cuda":
        return 64
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    classifier(generator.synthesize(torch.ones(probe, generator.style_dim, device=device)))
    per_edit = max((torch.cuda.max_memory_allocated(device) - before) / probe, 1.0)
    free, _ = torch.cuda.mem_get_info(device)
    return int(min(4096, max(16, memory_fraction * free / per_edit)))


def search_precision(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of AttFind's exact search (``attfind.precision``): "auto" is bf16 on a GPU that has it and
    fp32 elsewhere (a CPU runs bf16 slower), "fp32" none, "bf16" bf16."""
    if precision == "fp32" or (precision == "auto" and not (device.type == "cuda" and torch.cuda.is_bf16_supported())):
        return None
    if precision in ("auto", "bf16"):
        return torch.bfloat16
    raise ValueError(f"attfind.precision must be one of auto, fp32, bf16, got '{precision}'")


def _materialise(state: SynthesisState, batch: int) -> SynthesisState:
    """A batch-1 state repeated ``batch`` times as real (channels_last) memory: compiled layers want no zero strides."""
    x = state.x.expand(batch, -1, -1, -1).contiguous(memory_format=torch.channels_last)
    img = None if state.img is None else state.img.expand(batch, -1, -1, -1).contiguous(memory_format=torch.channels_last)
    return SynthesisState(x, img)


@torch.no_grad()
def edited_logits_naive(generator: Generator, classifier: nn.Module, styles: Tensor, targets: Tensor,
                        coords: Tensor) -> Tensor:
    """The reference: one full generator + classifier pass per image, coordinate and direction (as public code)."""
    device = next(generator.parameters()).device
    out = []
    for n in range(len(styles)):
        per_image = []
        for coord in coords.tolist():
            for direction in range(2):
                s = styles[n : n + 1].clone().to(device)
                s[0, coord] = targets[direction, n, coord]
                per_image.append(classifier(generator.synthesize(s)).float().cpu())
        out.append(torch.cat(per_image).view(len(coords), 2, -1))
    return torch.stack(out)


@dataclass
class Effects:
    """The classifier's logits on every single-coordinate edit of a set of images."""

    edited_logits: Tensor  # (N, K, 2, C)
    base_logits: Tensor  # (N, C): C(G(s)), the unedited reconstruction
    input_logits: Tensor  # (N, C): C(x), the real image
    coords: Tensor  # (K,) flat StyleSpace indices
    image_indices: Tensor  # (N,) dataset indices
    evaluated: Tensor | None = None  # (N, K, 2) bool: the edits evaluated (a screened search; None: all). The others
    # hold the unedited logits (no effect)

    @property
    def predicted(self) -> Tensor:
        """The classifier's class on the unedited reconstructions (N,)."""
        return self.base_logits.argmax(1)

    @property
    def consistent(self) -> Tensor:
        """True where C agrees on the image and its reconstruction (N,)."""
        return self.base_logits.argmax(1) == self.input_logits.argmax(1)

    def toward(self, target: int | Tensor, output: str = "probs") -> Tensor:
        """Change of class ``target``'s output on every edit (N, K, 2); ``target`` an int or one class per image."""
        target = torch.as_tensor(target)
        if target.ndim == 0:
            target = target.expand(len(self.base_logits))
        edited = class_score(self.edited_logits, target[:, None, None], output)
        return edited - class_score(self.base_logits, target, output)[:, None, None]

    def subset(self, mask: Tensor) -> Effects:
        """The effects of the images where ``mask`` (N,) is True."""
        return Effects(self.edited_logits[mask], self.base_logits[mask], self.input_logits[mask], self.coords,
                       self.image_indices[mask], None if self.evaluated is None else self.evaluated[mask])

    def state_dict(self) -> dict:
        return asdict(self)


def class_score(logits: Tensor, target: Tensor, output: str) -> Tensor:
    """Class ``target``'s probability, or its one-vs-rest log-odds log p / (1 - p), from logits (..., C)."""
    index = target.unsqueeze(-1).expand(*logits.shape[:-1], 1)
    if output == "probs":
        return logits.softmax(-1).gather(-1, index).squeeze(-1)
    if output == "logits":
        chosen = logits.gather(-1, index).squeeze(-1)
        others = logits.scatter(-1, index, float("-inf")).logsumexp(-1)
        return chosen - others
    raise ValueError(f"attfind.output must be one of {OUTPUTS}, got '{output}'")


def compute_effects(models: StylexModels, styles: Tensor, input_logits: Tensor, image_indices: Tensor,
                    stats: StyleStats, cfg: AttFindConfig, cache: str | Path | None = None, dist: DistInfo = SINGLE,
                    progress: bool = True, chunk: int = 8, identity: str | None = None,
                    screen: Tensor | None = None) -> Effects:
    """Effects of every searched coordinate on every image; resumable through ``cache``, sharded over ranks.

    Images are processed in chunks; each chunk's result is appended to ``cache`` as a part file (one series per
    rank), so an interrupted run continues where it stopped. The parts are keyed by ``identity`` (what the styles and
    statistics were made from: a run's inversion store and images, see :func:`cache_key`), else by the styles' bits.
    Under ``torch.distributed`` rank r takes images r, r + world, ...; every rank returns the whole result.
    ``screen`` (N, K, 2) bool: evaluate only those edits (:func:`stylexlib.explain.attfind.screen.screened_edits`, for
    ``attfind.screen``); the others hold the unedited logits, and the result's ``evaluated`` marks which is which.
    """
    generator, classifier = models.generator, models.classifier
    coords = searched_coordinates(generator, cfg.include_torgb)
    targets = shift_targets(styles, stats, cfg.shift, cfg.shift_std)
    mine = torch.arange(dist.rank, len(styles), dist.world_size)
    key = cache_key(generator, cfg, identity) if identity is not None else float_key(styles, stats, generator, cfg)
    parts = partial_files(cache, dist.rank)
    done = _load_partial(parts, key)
    bar = tqdm(total=len(mine), initial=len(done), desc="AttFind effects", unit="img",
               disable=not (progress and dist.is_main))
    if cfg.fast and len(done) < len(mine):
        fast_generator, fast_classifier = inference_copies(generator, classifier, cfg.compile)
        autocast = search_precision(models.device, cfg.precision)
        batch_size = edit_batch_size(fast_generator, fast_classifier, cfg.batch_size)
    for start in range(len(done), len(mine), chunk):
        todo = mine[start : start + chunk]
        only = screen[todo] if screen is not None else None
        if cfg.fast:
            logits = edited_logits_fast(fast_generator, fast_classifier, styles[todo], targets[:, todo], coords,
                                        batch_size, only, autocast=autocast)
        else:
            logits = edited_logits_naive(generator, classifier, styles[todo], targets[:, todo], coords)
        done.extend(logits.unbind(0))
        if parts is not None:
            torch_save(parts.parent / f"{parts.name}{start:07d}.pt", {"key": key, "start": start, "logits": logits})
        bar.update(len(todo))
    bar.close()
    edited = interleave_shards(gather_objects(torch.stack(done) if done else None, dist), len(styles), dist.world_size)
    base = predict_styles(generator, classifier, styles, cfg.batch_size or 64)
    unevaluated = edited.isnan().any(-1)  # screened out: counted as no effect
    edited[unevaluated] = base[:, None, None, :].expand_as(edited)[unevaluated]
    return Effects(edited, base, input_logits.float().cpu(), coords, torch.as_tensor(image_indices),
                   ~unevaluated if screen is not None else None)


def partial_files(cache: str | Path | None, rank: int) -> Path | None:
    """The prefix of one rank's part files beside ``cache`` (``effects.rank0.part`` + start + ``.pt``)."""
    return Path(cache).with_name(f"{Path(cache).stem}.rank{rank}.part") if cache is not None else None


def remove_partials(cache: str | Path) -> None:
    """Delete every rank's part files of ``cache`` (once the whole result is saved)."""
    for part in Path(cache).parent.glob(f"{Path(cache).stem}.rank*.part*.pt"):
        part.unlink(missing_ok=True)


def interleave_shards(parts: list[Tensor | None], total: int, world: int) -> Tensor:
    """Interleave the ranks' shards (rank r holds images r, r + world, ...) back into image order."""
    shape = next(p for p in parts if p is not None).shape[1:]
    out = torch.empty(total, *shape)
    for rank, part in enumerate(parts):
        if part is not None:
            out[rank::world] = part
    return out


def cache_key(generator: Generator, cfg: AttFindConfig, identity: str) -> str:
    """A fingerprint of what the effects depend on: ``identity`` (the inverted images, named by what made them, never by
    their floats: a GPU refinement is not bit-reproducible), the statistics' images, the coordinates, the shifts and
    the screening."""
    coords = searched_coordinates(generator, cfg.include_torgb)
    screening = ([cfg.screen_candidates, cfg.screen_per_image, cfg.output, cfg.drop_inconsistent] if cfg.screen
                 else None)  # the exhaustive logits are free of the output and the pools
    stats = [cfg.stats_images, cfg.seed]  # the encoder's statistics the shift range starts from (train images)
    plain = [identity, coords.tolist(), cfg.shift, cfg.shift_std, cfg.include_torgb, screening, stats]
    return hashlib.sha1(json.dumps(plain).encode()).hexdigest()


def float_key(styles: Tensor, stats: StyleStats, generator: Generator, cfg: AttFindConfig) -> str:
    """The cache key of styles with no identity (in-memory use): their bits and the shift targets'."""
    digest = hashlib.sha1()
    for tensor in (styles, shift_targets(styles, stats, cfg.shift, cfg.shift_std)):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return cache_key(generator, cfg, digest.hexdigest())


def _load_partial(prefix: Path | None, key: str) -> list[Tensor]:
    """The images done in the part files at ``prefix`` computed for ``key``, in order (up to the first gap)."""
    if prefix is None:
        return []
    chunks: dict[int, Tensor] = {}
    for path in prefix.parent.glob(f"{prefix.name}*.pt"):
        state = torch_load(path)
        if state.get("key") == key:
            chunks[int(state["start"])] = state["logits"]
        else:
            log.info("ignoring %s: it was computed for other images or settings", path)
    done: list[Tensor] = []
    while len(done) in chunks:
        done.extend(chunks[len(done)].unbind(0))
    if done:
        log.info("resuming AttFind from %s* (%d images done)", prefix, len(done))
    return done


# ---------------------------------------------------------------------------- applying attributes
def top_edits(score: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of ``score`` (N, K, 2), the ``k`` highest-scoring edits, one direction per coordinate (applied
    together, a coordinate's second direction would undo its first): values, coordinate positions and directions,
    each (N, k), best first."""
    best, directions = score.max(-1)
    values, positions = best.topk(min(k, best.shape[-1]), dim=-1)
    return values, positions, directions.gather(-1, positions)


def apply_attributes(styles: Tensor, targets: Tensor, flats: Tensor, directions: Tensor,
                     strength: float = 1.0) -> Tensor:
    """Styles (N, S) with coordinates ``flats`` (N, k) moved toward their targets (2, N, S) in ``directions`` (N, k)."""
    edited = styles.clone()
    rows = torch.arange(len(styles))[:, None].expand_as(flats)
    goal = targets[directions, rows, flats]
    edited[rows, flats] = styles[rows, flats] + strength * (goal - styles[rows, flats])
    return edited


@torch.no_grad()
def predict_styles(generator: Generator, classifier: nn.Module, styles: Tensor, batch_size: int = 256) -> Tensor:
    """Classifier logits on G(styles) (N, C), in batches."""
    device = next(generator.parameters()).device
    return torch.cat([classifier(generator.synthesize(s.to(device))).float().cpu() for s in styles.split(batch_size)])
