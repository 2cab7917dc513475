"""One way to run the classifier on a set of images: batched, without gradients, any input range."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from stylexlib.data import to_float


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (the CPU for a model without either)."""
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@torch.no_grad()
def classify(classifier: nn.Module, images: Tensor, batch_size: int = 256,
             device: torch.device | str | None = None) -> Tensor:
    """The classifier's logits (N, C), float32 on the CPU, for uint8 or [-1, 1] float images, in batches on
    ``device`` (default: the classifier's)."""
    device = torch.device(device) if device is not None else model_device(classifier)
    out = [classifier((to_float(b) if b.dtype == torch.uint8 else b.float()).to(device)).float().cpu()
           for b in images.split(batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)
