"""The classifier to explain: a small built-in CNN, or the user's own model, behind one wrapper.

The rest of the pipeline only sees ``images in [-1, 1] (N, 3, H, W) -> logits (N, C)``.
"""
from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class ClassifierError(ValueError):
    """The classifier could not be loaded or does not fit the data; the message says why and how to fix it."""


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks halving the resolution down to 4x4, global average pooling, linear head."""

    def __init__(self, num_classes: int, resolution: int, width: int = 32) -> None:
        super().__init__()
        self.arch = {"num_classes": num_classes, "resolution": resolution, "width": width}
        layers: list[nn.Module] = []
        channels, res = 3, resolution
        out = width
        while res > 4:
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),  # modules, not functional and not in place: guided backprop hooks them
                nn.Conv2d(out, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels, out, res = out, min(out * 2, width * 8), res // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1))


class ClassifierWrapper(nn.Module):
    """Takes images in [-1, 1]; resizes and normalises them as the wrapped model expects; returns logits."""

    def __init__(
        self,
        model: nn.Module,
        input_size: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.input_size = input_size
        self.made_from: str | None = None  # fingerprint of the config a built-in CNN was trained with
        if (mean is None) != (std is None):
            raise ClassifierError("classifier.mean and classifier.std must be given together")
        self.register_buffer("mean", None if mean is None else torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", None if std is None else torch.tensor(std).view(1, -1, 1, 1))
        # the model's output for each of the data's classes (classifier.class_names); None: the same order
        self.register_buffer("output_order", None, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        if self.input_size is not None and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False)
        if self.mean is not None:
            x = ((x + 1) / 2 - self.mean) / self.std
        logits = self.model(x)
        return logits if self.output_order is None else logits[:, self.output_order]

    def set_class_order(self, class_names: list[str] | None, data_class_names: list[str]) -> None:
        """Reorder the outputs from the model's class order (``classifier.class_names``) to the data's."""
        if class_names is None:
            self.output_order = None
            return
        if len(set(class_names)) != len(class_names) or sorted(class_names) != sorted(data_class_names):
            raise ClassifierError(
                f"classifier.class_names {list(class_names)} does not match the data's classes "
                f"{list(data_class_names)}: list each of the data's classes once, in the order of your model's outputs")
        self.output_order = torch.tensor([list(class_names).index(name) for name in data_class_names])


def build_classifier(num_classes: int, resolution: int, width: int = 32) -> ClassifierWrapper:
    """A fresh built-in CNN behind the wrapper."""
    return ClassifierWrapper(SmallCNN(num_classes, resolution, width))


def save_classifier(path: str | Path, wrapper: ClassifierWrapper, class_names: list[str], extra: dict | None = None) -> Path:
    """Save the built-in CNN (weights, architecture, class names) atomically."""
    from stylexlib.core.io import torch_save

    model = wrapper.model
    if not isinstance(model, SmallCNN):
        raise ClassifierError("save_classifier saves the built-in SmallCNN only; user models are loaded from their source")
    payload = {"arch": model.arch, "state_dict": model.state_dict(), "class_names": list(class_names), **(extra or {})}
    return torch_save(path, payload)


def load_trained_classifier(path: str | Path) -> tuple[ClassifierWrapper, list[str]]:
    """Load a built-in CNN saved by :func:`save_classifier`."""
    from stylexlib.core.io import torch_load

    path = Path(path)
    if not path.exists():
        raise ClassifierError(f"classifier checkpoint not found: {path}; run stage 02_classifier first")
    payload = torch_load(path)
    model = SmallCNN(**payload["arch"])
    model.load_state_dict(payload["state_dict"])
    wrapper = ClassifierWrapper(model).eval()
    wrapper.made_from = payload.get("fingerprint")  # the config it was trained with (stylexlib.core.provenance)
    return wrapper, list(payload["class_names"])


def load_user_classifier(
    source: str,
    input_size: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> ClassifierWrapper:
    """Load a TorchScript file or call a ``package.module:factory`` that returns an ``nn.Module``."""
    if ":" in source and not Path(source).exists():
        module_name, _, attr = source.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ClassifierError(
                f"classifier.source '{source}': cannot import {attr!r} from module {module_name!r} ({exc}); "
                "use 'package.module:factory' with the package importable (installed or on PYTHONPATH)"
            ) from None
        model = factory()
        if not isinstance(model, nn.Module):
            raise ClassifierError(f"classifier.source '{source}': the factory returned {type(model).__name__}, not an nn.Module")
    else:
        path = Path(source)
        if not path.exists():
            raise ClassifierError(
                f"classifier.source '{source}': no such file; give a TorchScript file, 'package.module:factory', or 'train'"
            )
        model = _load_model_file(path)
    return ClassifierWrapper(model.eval(), input_size, mean, std).eval()


def _load_model_file(path: Path) -> nn.Module:
    """Load a TorchScript file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but widely used
            return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise ClassifierError(
            f"classifier.source '{path}' is not a TorchScript file ({str(exc).splitlines()[0]}); "
            "save it with torch.jit.script(model).save(path) or torch.jit.trace(model, example).save(path), "
            "or use 'package.module:factory'"
        ) from None


def check_classifier(wrapper: nn.Module, num_classes: int, resolution: int) -> None:
    """Fail early with a clear message if the classifier does not map (N, 3, R, R) in [-1, 1] to (N, C) logits."""
    probe = torch.zeros(2, 3, resolution, resolution)
    device = next(iter(wrapper.parameters()), probe).device
    with torch.no_grad():
        try:
            out = wrapper(probe.to(device))
        except Exception as exc:  # noqa: BLE001 - user models fail in arbitrary ways
            raise ClassifierError(
                f"the classifier failed on a (2, 3, {resolution}, {resolution}) batch: {exc}; "
                "set classifier.input_size / mean / std to match what your model expects"
            ) from None
    if not isinstance(out, torch.Tensor) or out.shape != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ClassifierError(
            f"the classifier returned {shape} for a batch of 2 images; expected logits of shape (2, {num_classes}) "
            f"for the {num_classes} classes of the data"
        )
