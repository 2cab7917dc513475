"""StylEx training losses, one named function per term.

Adversarial, R1 and path-length terms follow StyleGAN2 (Karras et al., "Analyzing and Improving
the Image Quality of StyleGAN", CVPR 2020). Reconstruction (L1 + LPIPS + latent) and the
classifier KL term follow StylEx (Lang et al., "Explaining in Style", ICCV 2021, Sec. 3). Their weights and the
phase that trains each: the registry in :mod:`stylexlib.gan.train.loss_terms`.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor


# torchvision ImageNet checkpoints that lpips' trunks load through torch.hub.
LPIPS_TRUNK_CHECKPOINTS = {
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
}
LPIPS_MIN_SIZE = 32  # smaller images are upsampled first: the squeeze trunk's pooling needs >= 32 px
VISIBILITY_SIZE = 64  # how visible an edit is, judged where LPIPS was fitted to people: 64 px patches (BAPPS)


def d_logistic_loss(real_pred: Tensor, fake_pred: Tensor) -> Tensor:
    """Discriminator logistic loss softplus(D(fake)) + softplus(-D(real)) (StyleGAN2, Sec. 2)."""
    return F.softplus(fake_pred).mean() + F.softplus(-real_pred).mean()


def g_nonsaturating_loss(fake_pred: Tensor) -> Tensor:
    """Generator non-saturating loss softplus(-D(G(z))) (Goodfellow et al. 2014; StyleGAN2)."""
    return F.softplus(-fake_pred).mean()


def d_r1_loss(real_pred: Tensor, real_img: Tensor) -> Tensor:
    """R1 penalty E[||grad_x D(x)||^2] on real images (Mescheder et al. 2018; StyleGAN2).

    ``real_img`` must require grad. The caller multiplies by ``r1_gamma / 2`` and, with lazy
    regularization every ``r1_every`` steps, by ``r1_every`` (StyleGAN2, Sec. 3.1).
    """
    (grad,) = torch.autograd.grad(real_pred.sum(), real_img, create_graph=True)
    return grad.float().square().flatten(1).sum(dim=1).mean()


def g_path_length_loss(fake_img: Tensor, latents: Tensor, mean_path_length: float | Tensor,
                       decay: float = 0.01) -> tuple[Tensor, Tensor, Tensor]:
    """Path-length regularizer (StyleGAN2, Sec. 3.2): (|J_w^T y| - a)^2 with a a running mean.

    ``latents`` (N, D) or (N, layers, D) must be part of the graph producing ``fake_img``.
    Returns ``(loss, new_mean_path_length, path_lengths)``; the new mean is detached.
    """
    noise = torch.randn_like(fake_img) / math.sqrt(fake_img.shape[2] * fake_img.shape[3])
    (grad,) = torch.autograd.grad((fake_img * noise).sum(), latents, create_graph=True)
    squared = grad.float().square().sum(dim=-1)
    path_lengths = (squared.mean(dim=1) if squared.ndim > 1 else squared).sqrt()
    mean = torch.as_tensor(mean_path_length, dtype=path_lengths.dtype, device=path_lengths.device)
    new_mean = (mean + decay * (path_lengths.mean() - mean)).detach()
    loss = (path_lengths - new_mean).square().mean()
    return loss, new_mean, path_lengths


def load_lpips(net: str = "squeeze", device: torch.device | str = "cpu") -> torch.nn.Module:
    """A frozen LPIPS model (Zhang et al. 2018) in eval mode; inputs are images in [-1, 1].

    The trunk's torchvision ImageNet weights come from ``$TORCH_HOME/hub/checkpoints/`` (downloaded
    when missing and possible); without them this raises one RuntimeError naming the file.
    """
    import lpips

    if net not in LPIPS_TRUNK_CHECKPOINTS:
        raise ValueError(f"lpips net must be one of {sorted(LPIPS_TRUNK_CHECKPOINTS)}, got '{net}'")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)  # torchvision's `pretrained=` deprecation
            model = lpips.LPIPS(net=net, pretrained=True, verbose=False)
    except OSError as exc:  # urllib.error.URLError included
        if _trunk_checkpoint_path(net).exists():
            raise
        raise RuntimeError(_missing_trunk_message(net, exc)) from None
    model = model.eval().to(device)
    model.requires_grad_(False)
    return model


def _trunk_checkpoint_path(net: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_TRUNK_CHECKPOINTS[net]


def _missing_trunk_message(net: str, exc: Exception) -> str:
    folder = _trunk_checkpoint_path(net).parent
    name = LPIPS_TRUNK_CHECKPOINTS[net]
    torch_home = os.environ.get("TORCH_HOME", "<unset: default ~/.cache/torch>")
    return (f"LPIPS ('{net}') needs torchvision's ImageNet weights file '{name}', which is missing "
            f"and could not be downloaded ({exc.__class__.__name__}: {exc}). Put '{name}' in "
            f"{folder} (that is $TORCH_HOME/hub/checkpoints/ with TORCH_HOME={torch_home}).")


def lpips_input(images: Tensor, min_size: int = LPIPS_MIN_SIZE) -> Tensor:
    """Images as the LPIPS trunk takes them: float, and bilinearly upsampled to ``min_size`` px when smaller."""
    images = images.float()
    if min(images.shape[-2:]) < min_size:
        images = F.interpolate(images, size=min_size, mode="bilinear", align_corners=False)
    return images


def lpips_distance(lpips_model: torch.nn.Module, x: Tensor, y: Tensor, min_size: int = LPIPS_MIN_SIZE) -> Tensor:
    """Per-image LPIPS (N,) of images in [-1, 1]; images under ``min_size`` px are bilinearly upsampled to it."""
    return lpips_model(lpips_input(x, min_size), lpips_input(y, min_size)).flatten()


def visible_change(lpips_model: torch.nn.Module, original: Tensor, changed: Tensor) -> Tensor:
    """How much of an edit a person sees: per-image LPIPS with images under VISIBILITY_SIZE enlarged to it, as the
    gallery shows them. LPIPS's weights were fitted to people's judgements of 64 px patches; at 32 px a mouth spans
    about one cell of the trunk's deeper layers, and the synthetic label's own frown-to-smile change would read as
    invisible (LPIPS 0.010 against 0.025 enlarged)."""
    return lpips_distance(lpips_model, original, changed, VISIBILITY_SIZE)


def classifier_kl_loss(logits_real: Tensor, logits_rec: Tensor, reduction: str = "mean") -> Tensor:
    """KL(C(x) || C(x')) averaged over the batch ("mean") or per image ("none"); C(x) a fixed (detached) target.

    Lang et al. 2021, Sec. 3.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"classifier_kl_loss: reduction must be 'mean' or 'none', got '{reduction}'")
    target = F.log_softmax(logits_real.detach().float(), dim=1)
    kl = F.kl_div(F.log_softmax(logits_rec.float(), dim=1), target, reduction="none", log_target=True).sum(dim=1)
    return kl if reduction == "none" else kl.mean()


def latent_mmd_loss(latents: Tensor, reference: Tensor, scales: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
                    ) -> Tensor:
    """Unbiased MMD^2 between ``latents`` and a fixed (detached) ``reference`` set: 0 when the two distributions
    agree, as a Wasserstein autoencoder asks (Tolstikhin et al., ICLR 2018). Inverse multiquadratic kernels
    C / (C + |x - y|^2) summed over ``scales`` x 2 d sigma^2, sigma^2 the reference's mean variance. Unlike matching
    means and variances, it pulls the latents onto the region the reference occupies, not just to its moments.
    The mapping match passes mapping(z) against E(x).
    """
    x, y = latents.float(), reference.detach().float()
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"latent_mmd_loss needs at least 2 latents per set, got {len(x)} and {len(y)}")
    base = 2.0 * x.shape[1] * y.var(dim=0).mean().clamp_min(1e-8)
    dxx, dyy, dxy = torch.cdist(x, x).square(), torch.cdist(y, y).square(), torch.cdist(x, y).square()
    return sum(unbiased_mmd2(c / (c + dxx), c / (c + dyy), c / (c + dxy)) for c in (s * base for s in scales))


def class_pathway_sparsity(generator: torch.nn.Module) -> Tensor:
    """Group lasso on the generator's class columns (``Generator.class_columns``): the mean over StyleSpace
    coordinates of the L2 norm of how much the class input ``c`` moves that coordinate. Small when few coordinates
    carry the class, so that single-coordinate edits (AttFind) can change it."""
    return generator.class_columns().norm(dim=1).mean()


def class_shares(class_columns: Tensor) -> Tensor:
    """Each StyleSpace coordinate's share of the class pathway (S,), summing to 1 (all 0 for a class input that moves
    nothing), from the class columns (S, classes): the norms of the columns centred over the classes, i.e. how far the
    coordinate moves when the class input moves from one class to another (what every class adds alike is a bias, not
    the class), over their sum."""
    spread = (class_columns - class_columns.mean(dim=1, keepdim=True)).norm(dim=1)
    return spread / spread.sum().clamp_min(1e-12)


def class_pathway_share_excess(generator: torch.nn.Module, max_share: float) -> Tensor:
    """How far the coordinates the class moves most exceed ``max_share`` of its pathway: the sum over StyleSpace
    coordinates of max(0, share - max_share), shares from :func:`class_shares`. Zero when the class is spread over at
    least ``1 / max_share`` coordinates; beside :func:`class_pathway_sparsity`, which gathers the class into few
    coordinates, it keeps any one of them from becoming the whole class."""
    return (class_shares(generator.class_columns()) - max_share).clamp_min(0).sum()


def unbiased_mmd2(kxx: Tensor, kyy: Tensor, kxy: Tensor) -> Tensor:
    """The unbiased MMD^2 estimate from kernel matrices k(x, x), k(y, y) and k(x, y) (diagonals left out)."""
    m, n = len(kxx), len(kyy)
    return ((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
            - 2 * kxy.mean())


def weighted_sum(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """Sum of ``weights[name] * terms[name]`` over the given terms (every name must have a weight)."""
    missing = set(terms) - set(weights)
    if missing:
        raise KeyError(f"no weight for loss terms {sorted(missing)}; known: {sorted(weights)}")
    return sum(weights[name] * value for name, value in terms.items())
