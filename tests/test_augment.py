"""DiffAugment: each transform does what it says, is differentiable, and bad policies are refused."""
from __future__ import annotations

import pytest
import torch

from stylexlib.gan.augment import diff_augment, parse_policy, random_color, random_cutout, random_translation


def images(n: int = 6, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_translation_moves_content_by_whole_pixels_and_fills_zeros() -> None:
    x = images()
    torch.manual_seed(1)
    y = random_translation(x)
    for a, b in zip(x, y):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(b[:, max(dy, 0):16 + min(dy, 0), max(dx, 0):16 + min(dx, 0)],
                                a[:, max(-dy, 0):16 + min(-dy, 0), max(-dx, 0):16 + min(-dx, 0)])]
        assert len(found) == 1  # exactly one integer shift within 1/8 of the size reproduces the image
        dy, dx = found[0]
        assert (b[:, :dy] == 0).all() if dy > 0 else True
        assert (b[:, :, 16 + dx:] == 0).all() if dx < 0 else True


def test_cutout_zeroes_one_half_size_square_per_image() -> None:
    x = images().abs() + 0.1  # no zeros of its own
    torch.manual_seed(2)
    y = random_cutout(x)
    zeros = (y == 0).all(dim=1)
    for mask in zeros:
        rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
        assert mask.sum() == len(rows) * len(cols)  # a rectangle ...
        assert len(rows) <= 8 and len(cols) <= 8 and mask.sum() >= 16  # ... of at most half the size, clipped
    assert torch.equal(y[~zeros[:, None].expand_as(y)], x[~zeros[:, None].expand_as(x)])


def test_color_changes_each_image_differently_and_passes_gradients() -> None:
    x = images().requires_grad_(True)
    torch.manual_seed(3)
    y = random_color(x)
    assert not torch.allclose(y[0] - x[0], y[1] - x[1])
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_policy_parsing_and_errors() -> None:
    assert parse_policy("") == [] and parse_policy("color, cutout") == ["color", "cutout"]
    with pytest.raises(ValueError, match="stylex.regularise.augment.*colour"):
        parse_policy("colour")
    x = images()
    assert diff_augment(x, "") is x
    torch.manual_seed(4)
    assert diff_augment(x, "translation,cutout").shape == x.shape
