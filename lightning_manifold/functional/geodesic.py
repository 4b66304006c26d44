"""Ignorance, truth and geodesics between models (thesis eq. 2.2.3).

Each sample's sqrt-probability vector is a point on the unit sphere; the geodesic between two
models is, sample by sample, the great circle between those points.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_manifold.functional._checks import (
    ArrayLike,
    as_tensor,
    check_count,
    check_device,
    check_float_dtype,
    check_labels,
    check_probabilities,
    check_same_space,
    common_dtype,
)

__all__ = ["geodesic_point", "ignorance", "ignorance_truth_geodesic", "truth"]


def ignorance(
    num_samples: int,
    num_classes: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Ignorance P0: ``p[n, c] = 1/C`` for every sample. Returns (N, C) probabilities.

    Raises:
        ValueError: for a non-integer or too small ``num_samples`` (>= 1) or ``num_classes``
            (>= 2), a non-floating ``dtype`` or a ``device`` this machine does not have.
    """
    num_samples = check_count(num_samples, "num_samples", 1)
    num_classes = check_count(num_classes, "num_classes", 2)
    dtype, device = check_float_dtype(dtype), check_device(device)
    return torch.full((num_samples, num_classes), 1.0 / num_classes, dtype=dtype, device=device)


def truth(
    labels: ArrayLike,
    num_classes: int,
    *,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Truth P*: one-hot ground-truth labels. Returns (N, C) probabilities on the labels' device."""
    num_classes = check_count(num_classes, "num_classes", 2)
    dtype = check_float_dtype(dtype)
    y = as_tensor(labels, "labels", floating=False)
    y = check_labels(y, y.shape[0] if y.ndim == 1 else -1, num_classes)
    return torch.nn.functional.one_hot(y, num_classes).to(dtype)


def _slerp_weights(theta: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """sin((1-α)θ)/sin θ and sin(αθ)/sin θ, written with sinc so θ -> 0 is exact (linear)."""
    # sin(xθ)/sin θ = x · sinc(xθ/π) / sinc(θ/π), finite for θ in [0, π/2].
    inv = 1.0 / torch.sinc(theta / math.pi)
    w0 = (1 - alpha) * torch.sinc((1 - alpha) * theta / math.pi) * inv
    w1 = alpha * torch.sinc(alpha * theta / math.pi) * inv
    return w0, w1


def geodesic_point(P: ArrayLike, Q: ArrayLike, alpha: float | ArrayLike) -> Tensor:
    """Points on the geodesic from P (alpha=0) to Q (alpha=1), eq. 2.2.3.

    ``sqrt(p^α) = sin((1-α)θ)/sin θ · sqrt(p) + sin(αθ)/sin θ · sqrt(q)``,
    ``θ_n = arccos Σ_c sqrt(p q)``, sample by sample.

    Args:
        P: (N, C) probabilities (start).
        Q: (N, C) probabilities (end).
        alpha: a float, a 0-dim tensor, or (A,) values; values outside [0, 1] extrapolate
            along the great circle.

    Returns:
        (N, C) probabilities for a scalar ``alpha``, (A, N, C) for a vector.
    """
    P3, p_single = check_probabilities(P, "P")
    Q3, q_single = check_probabilities(Q, "Q")
    if not (p_single and q_single):
        raise ValueError(
            f"`P` and `Q` must each be one model of shape (N, C), got {tuple(P3.shape)} and "
            f"{tuple(Q3.shape)}"
        )
    check_same_space(P3, Q3, "P", "Q")
    dtype = common_dtype(P3, Q3)
    S, T = P3[0].to(dtype).sqrt(), Q3[0].to(device=P3.device, dtype=dtype).sqrt()
    a = torch.as_tensor(alpha, dtype=dtype, device=S.device)
    if a.ndim > 1:
        raise ValueError(f"`alpha` must be a scalar or 1-D, got shape {tuple(a.shape)}")
    if not bool(torch.isfinite(a).all()):
        raise ValueError(f"`alpha` must be finite, got {alpha!r}")
    theta = (S * T).sum(-1).clamp(0, 1).arccos()  # (N,)
    w0, w1 = _slerp_weights(theta, a.reshape(-1, 1))  # (A, N)
    out = (w0[..., None] * S + w1[..., None] * T).square()
    out = out / out.sum(-1, keepdim=True)  # remove rounding drift off the sphere
    return out[0] if a.ndim == 0 else out


def ignorance_truth_geodesic(
    labels: ArrayLike,
    num_classes: int,
    alphas: ArrayLike,
    *,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Points on the geodesic from ignorance P0 to truth P* (eq. 2.2.3 with θ = arccos(1/sqrt C)).

    Args:
        labels: (N,) integer labels.
        num_classes: C.
        alphas: (A,) values in [0, 1].

    Returns:
        (A, N, C) probabilities (alpha = 1 is exactly one-hot).
    """
    P_star = truth(labels, num_classes, dtype=dtype)
    a = as_tensor(alphas, "alphas").to(device=P_star.device, dtype=dtype).reshape(-1)
    if not bool(torch.isfinite(a).all()):
        raise ValueError("`alphas` must be finite, got NaN or inf entries")
    theta = torch.tensor(math.acos(1 / math.sqrt(num_classes)), dtype=dtype, device=P_star.device)
    w0, w1 = _slerp_weights(theta, a)  # (A,)
    root = w0[:, None, None] / math.sqrt(num_classes) + w1[:, None, None] * P_star
    out = root.square()
    return out / out.sum(-1, keepdim=True)
