"""Trajectories re-indexed by progress, distances between them and tube widths.

Thesis eq. 2.2.5 and the text before it: two runs are compared at equal *progress*, not at
equal step, by interpolating each trajectory geodesically (eq. 2.2.3) between consecutive
snapshots.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_manifold.functional._checks import ArrayLike, as_tensor, check_probabilities
from lightning_manifold.functional.distances import bhattacharyya_coefficients
from lightning_manifold.functional.geodesic import _slerp_weights

__all__ = ["reindex_by_progress", "trajectory_distance", "tube_width"]


def _check_trajectory(
    P: ArrayLike, prog: ArrayLike, p_name: str, s_name: str
) -> tuple[Tensor, Tensor]:
    P3, single = check_probabilities(P, p_name)
    if single:
        raise ValueError(f"`{p_name}` must be a (T, N, C) trajectory, got one (N, C) model")
    s = as_tensor(prog, s_name).to(device=P3.device, dtype=torch.float64)
    if s.shape != (P3.shape[0],):
        raise ValueError(
            f"`{s_name}` must have shape (T,) = ({P3.shape[0]},), got {tuple(s.shape)}"
        )
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"`{s_name}` must be finite")
    return P3, s


def reindex_by_progress(
    P: ArrayLike, progress: ArrayLike, grid: ArrayLike
) -> tuple[Tensor, Tensor]:
    """Sample a trajectory at given progress values by geodesic interpolation.

    For a grid value s between the progress of consecutive snapshots k and k+1, the model is
    the geodesic point (eq. 2.2.3) between them at ``α = (s - s_k) / (s_{k+1} - s_k)``. When
    progress is not monotone the first segment that reaches s is used (the first time the run
    gets that far).

    Args:
        P: (T, N, C) probabilities of the snapshots in training order.
        progress: (T,) their progress (eq. 2.2.4).
        grid: (S,) progress values to sample.

    Returns:
        probs: (S, N, C) probabilities (NaN where not covered); valid: (S,) bool, False for
        grid values outside the progress range the trajectory visited.
    """
    P3, s = _check_trajectory(P, progress, "P", "progress")
    g = as_tensor(grid, "grid").to(device=P3.device, dtype=torch.float64).reshape(-1)
    T = P3.shape[0]
    dtype = P3.dtype
    out = torch.full((g.shape[0], *P3.shape[1:]), math.nan, dtype=dtype, device=P3.device)
    valid = torch.zeros(g.shape[0], dtype=torch.bool, device=P3.device)
    if T == 1:
        hit = g == s[0]
        out[hit] = P3[0]
        return out, hit
    lo = torch.minimum(s[:-1], s[1:])
    hi = torch.maximum(s[:-1], s[1:])
    covers = (g[:, None] >= lo[None, :]) & (g[:, None] <= hi[None, :])  # (S, T-1)
    valid = covers.any(1)
    seg = torch.argmax(covers.to(torch.int8), dim=1)  # first covering segment
    idx = valid.nonzero().squeeze(-1)
    if idx.numel():
        k = seg[idx]
        span = s[k + 1] - s[k]
        alpha = torch.where(span != 0, (g[idx] - s[k]) / torch.where(span != 0, span, 1.0), 0.0)
        A, B = P3[k].sqrt(), P3[k + 1].sqrt()  # (n, N, C)
        theta = (A * B).sum(-1).clamp(0, 1).arccos()  # (n, N)
        w0, w1 = _slerp_weights(theta, alpha.to(dtype)[:, None])
        pts = (w0[..., None] * A + w1[..., None] * B).square()
        out[idx] = pts / pts.sum(-1, keepdim=True)
    return out, valid


def trajectory_distance(
    P_u: ArrayLike,
    progress_u: ArrayLike,
    P_v: ArrayLike,
    progress_v: ArrayLike,
    *,
    n_points: int = 100,
) -> Tensor:
    """Distance between two trajectories at equal progress (eq. 2.2.5).

    ``∫ d_B(P_u(s), P_v(s)) ds`` over the progress range both runs visited, by the trapezoidal
    rule on ``n_points`` values, divided by the length of that range (so runs that do not
    reach progress 1 remain comparable; equal to eq. 2.2.5 when both cover [0, 1]).

    Args:
        P_u: (T_u, N, C) probabilities of run u; progress_u: (T_u,).
        P_v: (T_v, N, C) probabilities of run v; progress_v: (T_v,).
        n_points: number of progress values (>= 2).

    Returns:
        0-dim distance.

    Raises:
        ValueError: if the runs share no progress range or the probes differ.
    """
    Pu, su = _check_trajectory(P_u, progress_u, "P_u", "progress_u")
    Pv, sv = _check_trajectory(P_v, progress_v, "P_v", "progress_v")
    if Pu.shape[1:] != Pv.shape[1:]:
        raise ValueError(
            f"`P_v` must have the same (N, C) = {tuple(Pu.shape[1:])} as `P_u`, "
            f"got {tuple(Pv.shape[1:])}"
        )
    if not isinstance(n_points, int) or n_points < 2:
        raise ValueError(f"`n_points` must be an integer >= 2, got {n_points!r}")
    lo = max(float(su.min()), float(sv.min()))
    hi = min(float(su.max()), float(sv.max()))
    if hi <= lo:
        raise ValueError(
            f"the trajectories share no progress range: u covers [{float(su.min()):.3g}, "
            f"{float(su.max()):.3g}], v covers [{float(sv.min()):.3g}, {float(sv.max()):.3g}]"
        )
    grid = torch.linspace(lo, hi, n_points, dtype=torch.float64, device=Pu.device)
    A, _ = reindex_by_progress(Pu, su, grid)
    B, _ = reindex_by_progress(Pv, sv, grid)
    B = B.to(device=A.device, dtype=A.dtype)
    d = -bhattacharyya_coefficients(A, B).log().mean(-1)  # (S,) d_B at equal progress
    return torch.trapezoid(d, grid.to(d.dtype)) / (hi - lo)


def tube_width(P_runs: ArrayLike) -> Tensor:
    """Width of the tube of runs around their mean at equal progress (thesis §2.5.4.1).

    Args:
        P_runs: (R, S, N, C) probabilities of R runs (e.g. seeds of one configuration),
            each re-indexed on the same S progress values (:func:`reindex_by_progress`).
            NaN entries (progress not reached) propagate.

    Returns:
        (R, S) Bhattacharyya distance of each run to the arithmetic-mean model at each
        progress value.
    """
    X = as_tensor(P_runs, "P_runs")
    if X.ndim != 4 or X.numel() == 0:
        raise ValueError(
            f"`P_runs` must be a non-empty (R, S, N, C) array, got shape {tuple(X.shape)}"
        )
    mean = X.mean(0, keepdim=True)
    return -bhattacharyya_coefficients(X, mean).log().mean(-1)
