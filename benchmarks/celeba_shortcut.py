"""A smile classifier with a hidden shortcut, trained outside the workbench: the debugging use case on CelebA.

Someone trains a small CNN to tell smiling from not smiling faces on a CelebA subset in which ``Eyeglasses`` agrees
with ``Smiling`` on 95% of the images (glasses mostly on smiling faces), and saves it as TorchScript. Its reliance on
the shortcut is measured on every image left out of that subset (no planted correlation): the accuracy in each of
the four smiling x glasses groups, and where glasses and smile disagree against where they agree. Then
``stylex run configs/celeba_smile_shortcut.yaml`` explains the saved model with ``classifier.source`` on all of
CelebA; a faithful explanation shows glasses among each class's top attributes.

    python benchmarks/celeba_shortcut.py                       # writes runs/celeba_shortcut/smile_glasses.pt
    python benchmarks/celeba_shortcut.py --agreement 0.95 --out runs/celeba_shortcut

The model takes [0, 1] RGB images normalised with ImageNet's mean and std (the config says so, as a user would) and
returns two logits: not smiling, smiling. Prints JSON (the groups' sizes and accuracies); writes it beside the model.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GROUPS = {"not smiling, no glasses": (0, 0), "not smiling, glasses": (0, 1),
          "smiling, no glasses": (1, 0), "smiling, glasses": (1, 1)}


class SmileNet(nn.Module):
    """Four conv-BN-ReLU blocks, global average pooling, a linear head: a typical small image classifier. It expects
    images normalised with ImageNet's mean and std (:func:`normalise`), as torchvision-style models do."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers, channels = [], 3
        for out in (width, 2 * width, 4 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def shortcut_split(table: pd.DataFrame, agreement: float, agree_images: int, seed: int) -> np.ndarray:
    """A boolean mask of the training subset: ``agree_images`` images where Eyeglasses == Smiling (60% of the rare
    smiling-with-glasses group, the rest without either) and as many disagreeing ones as make ``agreement``."""
    rng = np.random.default_rng(seed)
    smile, glasses = table["Smiling"].to_numpy(), table["Eyeglasses"].to_numpy()

    def pick(s: int, g: int, count: int) -> np.ndarray:
        where = np.flatnonzero((smile == s) & (glasses == g))
        if count > len(where) * 0.8:
            raise SystemExit(f"only {len(where)} images with Smiling={s}, Eyeglasses={g}: ask for fewer "
                             "(--agree-images, --agreement)")
        return rng.choice(where, size=count, replace=False)

    both = int(0.6 * ((smile == 1) & (glasses == 1)).sum())
    disagree = int(round(agree_images * (1 - agreement) / agreement))
    chosen = np.concatenate([pick(1, 1, both), pick(0, 0, agree_images - both),
                             pick(1, 0, disagree - disagree // 2), pick(0, 1, disagree // 2)])
    mask = np.zeros(len(table), bool)
    mask[chosen] = True
    return mask


def normalise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images as the model reads them."""
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def load_images(root: Path, files: list[str]) -> torch.Tensor:
    """The images as float [0, 1] NCHW tensors."""
    arrays = [np.asarray(Image.open(root / f).convert("RGB"), dtype=np.uint8) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def train(model: SmileNet, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> None:
    """Adam with class-balanced cross-entropy and random horizontal flips."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    weight = (len(y) / (2 * torch.bincount(y, minlength=2).float())).clamp(max=20)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x))
        for batch in order.split(64):
            images = x[batch]
            flip = torch.rand(len(batch)) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)
            loss = F.cross_entropy(model(normalise(images)), y[batch], weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


@torch.no_grad()
def predict(model: SmileNet, x: torch.Tensor) -> torch.Tensor:
    """The predicted class of each [0, 1] image."""
    return torch.cat([model(normalise(b)).argmax(1) for b in x.split(256)])


def group_accuracy(predicted: np.ndarray, table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per smiling x glasses group: its size and the accuracy on it."""
    out = {}
    for name, (s, g) in GROUPS.items():
        rows = ((table["Smiling"] == s) & (table["Eyeglasses"] == g)).to_numpy()
        out[name] = {"images": int(rows.sum()),
                     "accuracy": float((predicted[rows] == s).mean()) if rows.any() else float("nan")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "celeba"),
                        help="the CelebA folder (labels.csv, images/)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "celeba_shortcut"))
    parser.add_argument("--agreement", type=float, default=0.95, help="share of training images where glasses = smile")
    parser.add_argument("--agree-images", type=int, default=2400, help="training images where they agree")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    data, out = Path(args.data), Path(args.out)
    table = pd.read_csv(data / "labels.csv")
    mask = shortcut_split(table, args.agreement, args.agree_images, args.seed)
    x = load_images(data, table["file"].tolist())
    y = torch.tensor(table["Smiling"].to_numpy())
    start = time.perf_counter()
    model = SmileNet()
    train(model, x[mask], y[mask], args.epochs, args.seed)
    predicted = predict(model, x).numpy()
    rest, fit = table[~mask], table[mask]
    groups = group_accuracy(predicted[~mask], rest)
    agree = float(np.mean([groups["not smiling, no glasses"]["accuracy"], groups["smiling, glasses"]["accuracy"]]))
    disagree = float(np.mean([groups["not smiling, glasses"]["accuracy"], groups["smiling, no glasses"]["accuracy"]]))
    report = {
        "training_images": int(mask.sum()),
        "training_agreement": float((fit["Smiling"] == fit["Eyeglasses"]).mean()),
        "training_accuracy": float((predicted[mask] == fit["Smiling"].to_numpy()).mean()),
        "heldout_images": int((~mask).sum()),
        "heldout_groups": groups,
        "heldout_accuracy_agree": agree,  # mean over the two groups where glasses and smile agree
        "heldout_accuracy_disagree": disagree,  # ... where they disagree: the shortcut's cost
        "heldout_balanced_accuracy": float(np.mean([g["accuracy"] for g in groups.values()])),
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    module = torch.jit.script(model)
    tmp = out / "smile_glasses.pt.tmp"
    module.save(str(tmp))
    tmp.replace(out / "smile_glasses.pt")
    (out / "smile_glasses.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
