"""The thesis' fixed 4-point frame (§2.4, eq. 2.4.1; figs. 2.9-2.10).

Four distributions span the three directions that carry most of a training trajectory: the
straight line from ignorance P0 to truth P*, and stand-ins for the trajectory's tangents at
both ends, the progress-weighted averages P_s1 and P_s2 of models near progress s1 and s2
(eq. 2.4.1). An InPCA of these four points (eq. 2.2.6) is a fixed, cheap 3-D frame; any model
is placed in it from its four distances by eq. 2.2.9, with no refit.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_manifold.functional._checks import (
    ArrayLike,
    as_tensor,
    check_labels,
    check_log_probabilities,
    check_probabilities,
)
from lightning_manifold.functional.distances import (
    _distance_to_ignorance,
    _distance_to_truth,
    bhattacharyya_from_sqrt,
)
from lightning_manifold.functional.inpca import InPCAResult, inpca, project_from_stats
from lightning_manifold.functional.prediction import nonzero_components

__all__ = [
    "BASIS_WIDTH",
    "FourPointBasis",
    "FourPointCoordinates",
    "four_point_basis",
    "four_point_coordinates",
    "four_point_distances",
    "progress_weighted_average",
    "progress_weights",
]

#: σ of the Gaussian progress weighting of eq. 2.4.1 (the thesis uses 0.05 throughout)
BASIS_WIDTH = 0.05

#: axes whose |λ| is below this fraction of the largest are null (rounding of a rank-2 frame)
_NULL_AXIS = 1e-9


def progress_weights(progress: ArrayLike, s: ArrayLike, sigma: float = BASIS_WIDTH) -> Tensor:
    """Unnormalised weights ``exp(-(s_P - s)² / 2σ²)`` of eq. 2.4.1.

    Args:
        progress: (m,) progress of the models (eq. 2.2.4).
        s: (b,) progress levels.
        sigma: width σ > 0.

    Returns:
        (m, b) float64 weights.
    """
    if not sigma > 0:
        raise ValueError(f"`sigma` must be > 0, got {sigma}")
    p = as_tensor(progress, "progress").to(torch.float64).reshape(-1)
    levels = as_tensor(s, "s").to(device=p.device, dtype=torch.float64).reshape(-1)
    return torch.exp(-((p[:, None] - levels[None, :]) ** 2) / (2 * sigma * sigma))


def progress_weighted_average(
    P: ArrayLike, progress: ArrayLike, s: ArrayLike, sigma: float = BASIS_WIDTH
) -> Tensor:
    """P_s of eq. 2.4.1: the Gaussian-in-progress weighted average of models near progress s.

    ``P_s = (1/Z) Σ_P' exp(-(s_P' - s)² / 2σ²) P'`` with Z the sum of the weights.

    Args:
        P: (m, N, C) probabilities of the models.
        progress: (m,) their progress (eq. 2.2.4).
        s: (b,) progress levels.
        sigma: width σ (thesis: 0.05).

    Returns:
        (b, N, C) float64 probabilities.
    """
    P3, _ = check_probabilities(P, "P")
    w = progress_weights(progress, s, sigma).to(P3.device)
    if w.shape[0] != P3.shape[0]:
        raise ValueError(f"`progress` must have shape (m,) = ({P3.shape[0]},), got {w.shape[0]}")
    w = w / w.sum(0, keepdim=True)
    return torch.einsum("mb,mnc->bnc", w, P3.to(torch.float64))


def four_point_distances(log_P: ArrayLike, basis_log_probs: ArrayLike, labels: ArrayLike) -> Tensor:
    """d_B (eq. 2.2.2) of models to the four basis points [P0, P_s1, P_s2, P*].

    Distances to ignorance and truth come from log-probabilities (exact for any finite logits).

    Args:
        log_P: (q, N, C) or (N, C) log-probabilities of the models.
        basis_log_probs: (2, N, C) log-probabilities of P_s1 and P_s2.
        labels: (N,) int labels (truth P*).

    Returns:
        (q, 4) or (4,) float64 distances.
    """
    L, single = check_log_probabilities(log_P, "log_P")
    B, _ = check_log_probabilities(basis_log_probs, "basis_log_probs")
    if B.shape != (2, *L.shape[1:]):
        raise ValueError(
            f"`basis_log_probs` must have shape (2, N, C) = (2, {L.shape[1]}, {L.shape[2]}), "
            f"got {tuple(B.shape)}"
        )
    y = check_labels(labels, L.shape[1], L.shape[2]).to(L.device)
    d = _four_point_distances(L, B, y)
    return d[0] if single else d


def _four_point_distances(L: Tensor, B: Tensor, labels: Tensor) -> Tensor:
    """:func:`four_point_distances` of checked (q, N, C) ``L``, (2, N, C) ``B`` and (N,) labels
    on L's device (a live frame's own, already valid data: no second validation pass)."""
    f64 = torch.float64
    middle = bhattacharyya_from_sqrt(
        torch.exp(0.5 * L.to(f64)), torch.exp(0.5 * B.to(device=L.device, dtype=f64))
    )
    return torch.cat(
        [
            _distance_to_ignorance(L).to(f64).reshape(-1, 1),
            middle.to(f64).reshape(-1, 2),
            _distance_to_truth(L, labels).to(f64).reshape(-1, 1),
        ],
        dim=1,
    )


class FourPointBasis(NamedTuple):
    """The InPCA frame of [P0, P_s1, P_s2, P*] (thesis §2.4).

    Attributes:
        distances: (4, 4) float64 d_B between the basis points.
        embedding: their InPCA (eq. 2.2.6) with its null axes dropped: at most 3 axes, sorted
            by |λ|, oriented so that truth minus ignorance (else P_s1 minus ignorance) is
            non-negative on every axis.
            ``embedding.coords`` rows are [P0, P_s1, P_s2, P*].
    """

    distances: Tensor
    embedding: InPCAResult


def four_point_basis(
    basis_log_probs: ArrayLike, labels: ArrayLike, n_components: int = 3
) -> FourPointBasis:
    """InPCA of ignorance, P_s1, P_s2 and truth (the fixed frame of thesis §2.4).

    Args:
        basis_log_probs: (2, N, C) log-probabilities of P_s1 and P_s2 (e.g. the log of
            :func:`progress_weighted_average`).
        labels: (N,) int labels (truth P*).
        n_components: axes to keep, 1..3 (four points span at most three).

    Returns:
        :class:`FourPointBasis`; place models with
        ``project_from_stats(four_point_distances(...), e.row_means, e.grand_mean,
        e.eigenvalues, e.eigenvectors)`` (eq. 2.2.9).
    """
    if not 1 <= int(n_components) <= 3:
        raise ValueError(f"`n_components` must be in [1, 3], got {n_components}")
    B, _ = check_log_probabilities(basis_log_probs, "basis_log_probs")
    if B.shape[0] != 2:
        raise ValueError(f"`basis_log_probs` must have shape (2, N, C), got {tuple(B.shape)}")
    C = B.shape[2]
    f64 = torch.float64
    y = check_labels(labels, B.shape[1], C).to(B.device)
    to_basis = _four_point_distances(B, B, y)  # (2, 4): rows P_s1, P_s2 (checked above)
    D = torch.zeros((4, 4), dtype=f64, device=B.device)
    D[1:3] = to_basis
    D[:, 1:3] = to_basis.T
    D[0, 3] = D[3, 0] = 0.5 * math.log(C)  # d_B(P0, P*) = -log sqrt(1/C)
    D = 0.5 * (D + D.T)
    D.fill_diagonal_(0.0)
    # drop null axes (four points on one geodesic span fewer than 3): eq. 2.2.9 divides by them
    res = nonzero_components(inpca(D, n_components=int(n_components)), tolerance=_NULL_AXIS)
    # orientation: truth - ignorance >= 0 on every axis (as ReferenceEmbedding does)
    # (an axis orthogonal to ignorance -> truth, as for basis points on the geodesic: P_s1 - P0)
    span = res.coords[3] - res.coords[0]
    flat = span.abs() <= 1e-9 * res.coords.abs().max()
    span = torch.where(flat, res.coords[1] - res.coords[0], span)
    flip = torch.where(span < 0, -1.0, 1.0).to(res.coords.dtype)
    res = InPCAResult(
        coords=res.coords * flip,
        eigenvalues=res.eigenvalues,
        eigenvectors=res.eigenvectors * flip,
        row_means=res.row_means,
        grand_mean=res.grand_mean,
        total_stress=res.total_stress,
        weights=None,
    )
    return FourPointBasis(D, res)


class FourPointCoordinates(NamedTuple):
    """Result of :func:`four_point_coordinates`.

    Attributes:
        basis: the :class:`FourPointBasis` frame.
        basis_log_probs: (2, N, C) log-probabilities of P_s1 and P_s2 (eq. 2.4.1).
        weight: (2,) the normaliser Z of eq. 2.4.1 at each level (near 0: no model was near it).
        coords: (m, k) the models placed in the frame by eq. 2.2.9.
    """

    basis: FourPointBasis
    basis_log_probs: Tensor
    weight: Tensor
    coords: Tensor


def four_point_coordinates(
    log_P: ArrayLike,
    progress: ArrayLike,
    labels: ArrayLike,
    levels: tuple[float, float] = (0.3, 0.7),
    sigma: float = BASIS_WIDTH,
    n_components: int = 3,
) -> FourPointCoordinates:
    """A set of models in the 4-point frame built from themselves (thesis §2.4, figs. 2.9-2.10).

    P_s1, P_s2 are the progress-weighted averages of the models (eq. 2.4.1), the frame is the
    InPCA of [P0, P_s1, P_s2, P*] (:func:`four_point_basis`) and every model is placed from its
    four distances by eq. 2.2.9.

    Args:
        log_P: (m, N, C) log-probabilities of the models.
        progress: (m,) their progress (eq. 2.2.4).
        labels: (N,) int labels (truth P*).
        levels: (s1, s2) progress levels (the thesis uses s1 = 1 - s2 = 0.2 or 0.3).
        sigma: width σ of eq. 2.4.1 (thesis: 0.05).
        n_components: axes of the frame, 1..3.

    Returns:
        :class:`FourPointCoordinates`.
    """
    L, _ = check_log_probabilities(log_P, "log_P")
    s = torch.as_tensor([float(v) for v in levels], dtype=torch.float64)
    if s.shape != (2,) or not bool(((s >= 0) & (s <= 1)).all()):
        raise ValueError(f"`levels` must be two progress levels in [0, 1], got {levels!r}")
    w = progress_weights(progress, s, sigma)
    if w.shape[0] != L.shape[0]:
        raise ValueError(f"`progress` must have shape (m,) = ({L.shape[0]},), got {w.shape[0]}")
    mean = progress_weighted_average(torch.exp(L.to(torch.float64)), progress, s, sigma)
    basis_log_probs = torch.log(mean / mean.sum(-1, keepdim=True))  # renormalise rounding
    basis = four_point_basis(basis_log_probs, labels, n_components=n_components)
    e = basis.embedding
    coords = project_from_stats(
        four_point_distances(L, basis_log_probs, labels),
        e.row_means, e.grand_mean, e.eigenvalues, e.eigenvectors,
    )  # fmt: skip
    return FourPointCoordinates(basis, basis_log_probs, w.sum(0), coords)
