"""The generator's StyleSpace as a flat vector: flat index <-> (layer, channel).

StyleSpace (Wu et al., CVPR 2021) is the concatenation of every modulated layer's style vector
(the affine layer outputs), toRGB layers included. StylEx (Lang et al., ICCV 2021) searches it
for classifier-specific attributes, one coordinate at a time.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import pandas as pd
import torch


@dataclass(frozen=True)
class StyleLayer:
    """One modulated layer: its name, style width (= its input channels) and output resolution."""

    name: str
    channels: int
    resolution: int
    is_torgb: bool


class StyleCoordinate(NamedTuple):
    """Where one flat StyleSpace coordinate lives."""

    flat: int
    layer: int
    name: str
    channel: int
    resolution: int
    is_torgb: bool


class StyleSpaceIndex:
    """Maps flat StyleSpace indices to (layer number, layer name, channel) and back.

    Layers are numbered in synthesis order, so an edit of a coordinate in layer ``l`` leaves all
    activations of layers ``< l`` unchanged.
    """

    def __init__(self, layers: Sequence[StyleLayer]):
        self.layers: list[StyleLayer] = list(layers)
        self.offsets: list[int] = [0]
        for layer in self.layers:
            self.offsets.append(self.offsets[-1] + layer.channels)
        self.layer_slices: list[slice] = [
            slice(start, stop) for start, stop in zip(self.offsets[:-1], self.offsets[1:])
        ]
        self._layer_by_name = {layer.name: i for i, layer in enumerate(self.layers)}

    @property
    def size(self) -> int:
        """Total number of StyleSpace coordinates."""
        return self.offsets[-1]

    def __len__(self) -> int:
        return self.size

    @property
    def num_layers(self) -> int:
        """Number of modulated layers (toRGB included)."""
        return len(self.layers)

    def layer_number(self, layer: int | str) -> int:
        """The layer number of a layer given by number or name."""
        if isinstance(layer, str):
            if layer not in self._layer_by_name:
                raise KeyError(f"unknown style layer '{layer}'; known: {', '.join(self._layer_by_name)}")
            return self._layer_by_name[layer]
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range [0, {self.num_layers})")
        return int(layer)

    def locate(self, flat: int) -> StyleCoordinate:
        """The layer and channel of flat coordinate ``flat``."""
        flat = int(flat)
        if not 0 <= flat < self.size:
            raise IndexError(f"flat index {flat} out of range [0, {self.size})")
        layer = bisect.bisect_right(self.offsets, flat) - 1
        info = self.layers[layer]
        return StyleCoordinate(flat, layer, info.name, flat - self.offsets[layer], info.resolution, info.is_torgb)

    def flat(self, layer: int | str, channel: int) -> int:
        """The flat index of ``channel`` in ``layer`` (number or name)."""
        number = self.layer_number(layer)
        if not 0 <= channel < self.layers[number].channels:
            raise IndexError(f"channel {channel} out of range for layer {self.layers[number].name}")
        return self.offsets[number] + int(channel)

    def layer_ids(self) -> torch.Tensor:
        """Layer number of every flat coordinate, shape (size,)."""
        counts = torch.tensor([layer.channels for layer in self.layers])
        return torch.repeat_interleave(torch.arange(self.num_layers), counts)

    def exclude_torgb_mask(self) -> torch.Tensor:
        """Boolean mask (size,), True for coordinates outside toRGB layers."""
        mask = torch.ones(self.size, dtype=torch.bool)
        for layer, span in zip(self.layers, self.layer_slices):
            if layer.is_torgb:
                mask[span] = False
        return mask

    def split(self, styles: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer views (N, channels) of a flat (N, size) style tensor."""
        return [styles[:, span] for span in self.layer_slices]

    def table(self, per_channel: bool = False) -> pd.DataFrame:
        """One row per layer (flat start/stop), or one row per coordinate with ``per_channel``."""
        if per_channel:
            rows = [self.locate(i)._asdict() for i in range(self.size)]
            return pd.DataFrame(rows).set_index("flat")
        rows = [
            dict(layer=i, name=info.name, resolution=info.resolution, channels=info.channels,
                 is_torgb=info.is_torgb, flat_start=span.start, flat_stop=span.stop)
            for i, (info, span) in enumerate(zip(self.layers, self.layer_slices))
        ]
        return pd.DataFrame(rows).set_index("layer")

    def __repr__(self) -> str:
        return f"StyleSpaceIndex({self.num_layers} layers, {self.size} coordinates)"
