"""Progress: projection of a model onto the geodesic from ignorance to truth (thesis eq. 2.2.4).

For ignorance P0 and truth P* every sample has the same angle ``θ = arccos(1/sqrt C)``, and the
geodesic point at ``α`` lies, sample by sample, in the plane spanned by the sqrt-probability
vectors ``e0`` (uniform) and ``e*`` (one-hot label). Writing the projection of a model's
sample onto that plane in polar coordinates ``(R_n, φ_n)`` gives

    d_G(P, P^α_{0,*}) = (1/N) Σ_n arccos(R_n cos(αθ - φ_n)),

where ``R_n cos φ_n = a_n = Σ_c sqrt(p[n, c] / C)`` and
``R_n sin φ_n = (b_n - a_n cos θ) / sin θ`` with ``b_n = sqrt(p[n, y_n])``. Because
``φ_n >= -(π/2 - θ)`` every term is convex in ``α`` on [0, 1], so the objective is convex;
a sample on the geodesic (``R_n = 1``) contributes a cusp ``|αθ - φ_n|``. The minimiser is found
by bisection on the sign of the (sub)gradient with safeguarded Newton steps inside the bracket,
for many models at once.
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
    check_row_sums,
)

__all__ = [
    "GeodesicProjection",
    "geodesic_projection",
    "geodesic_projection_from_log_probs",
    "per_class_progress_from_log_probs",
    "progress",
    "progress_from_log_probs",
]

_MAX_ITER = 200


class GeodesicProjection(NamedTuple):
    """Projection of models onto the ignorance->truth geodesic.

    Attributes:
        progress: (m,) progress ``s`` in [0, 1] (eq. 2.2.4); 0-dim for a single model.
        distance: (m,) geodesic distance d_G (eq. 2.5.4) from each model to the geodesic point
            at its progress: how far the model is off the straight path to the truth.
    """

    progress: Tensor
    distance: Tensor


def _plane_coordinates(log_P: Tensor, labels: Tensor, name: str) -> tuple[Tensor, Tensor, Tensor]:
    """Coordinates of each sample in the ignorance/truth plane, in float64.

    Also checks that the rows of ``log_P`` are normalised, on the sqrt-probabilities it
    computes anyway (one pass of ``exp`` instead of two).

    Args:
        log_P: (m, N, C) log-probabilities.
        labels: (N,) int64.
        name: argument name for error messages.

    Returns:
        x, y: (m, N) with ``x = R cos φ``, ``y = R sin φ``; q: (m, N) ``1 - R²``, the squared
        distance of the sample from the plane (clamped at the smallest normal float so the
        gradient below never divides 0 by 0).
    """
    C = log_P.shape[-1]
    cos_t, sin_t = 1 / math.sqrt(C), math.sqrt(1 - 1 / C)
    S = log_P.to(torch.float64).mul(0.5).exp_()  # sqrt-probabilities; exp(-inf) = 0
    norm2 = torch.linalg.vector_norm(S, dim=-1).square_()  # Σ_c p = 1 for normalised rows
    check_row_sums(norm2, name)
    # Σ_c as a matrix-vector product: reductions over a short class axis are slow.
    a = (S.reshape(-1, C) @ torch.full((C,), cos_t, dtype=S.dtype, device=S.device)).view(
        S.shape[:2]
    )
    b = S.gather(-1, labels.view(1, -1, 1).expand(S.shape[0], -1, 1)).squeeze(-1)
    y = (b - a * cos_t).div_(sin_t)
    q = (norm2 - a * a - y * y).clamp_(min=torch.finfo(torch.float64).tiny)
    return a, y, q


def _mean(v: Tensor, w: Tensor | None, wsum: Tensor | None) -> Tensor:
    return v.mean(-1) if w is None else (v * w).sum(-1) / wsum


def _end_slope(
    t: float, x: Tensor, y: Tensor, q: Tensor, w: Tensor | None, wsum: Tensor | None, side: float
) -> Tensor:
    """One-sided derivative of the objective at an end of [0, θ] (side +1: right, -1: left).

    A term sitting exactly on its cusp there contributes ``side`` (|t - φ| seen from inside).
    """
    rs = x * math.sin(t) - y * math.cos(t)  # R sin(t - φ)
    terms = rs / torch.addcmul(q, rs, rs).sqrt_()
    # On the cusp up to rounding: ignorance and truth themselves land here exactly.
    noise = 32 * torch.finfo(q.dtype).eps
    near_plane = q <= noise
    if bool(near_plane.any()):
        cusp = near_plane & (rs.abs() <= noise)
        terms = torch.where(cusp, torch.full_like(terms, side), terms)
    return _mean(terms, w, wsum)


class _Workspace:
    """Scratch buffers for :func:`_slope_and_curvature`, reused across Newton iterations.

    Fresh large tensors on CPU cost page faults on every allocation; the solver evaluates the
    gradient several times on arrays of the same (or shrinking) size.
    """

    def __init__(self, like: Tensor) -> None:
        self.rs = torch.empty_like(like)
        self.d2 = torch.empty_like(like)
        self.tmp = torch.empty_like(like)

    def views(self, rows: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.rs[:rows], self.d2[:rows], self.tmp[:rows]


def _slope_and_curvature(
    t: Tensor,
    x: Tensor,
    y: Tensor,
    q: Tensor,
    w: Tensor | None,
    wsum: Tensor | None,
    ws: _Workspace,
) -> tuple[Tensor, Tensor]:
    """Gradient and curvature of the objective in t = αθ for (B, N) rows; (B,) each.

    With ``s = t - φ``: d/dt arccos(R cos s) = R sin s / sqrt(q + R² sin² s) and the second
    derivative is R cos s · q / (q + R² sin² s)^(3/2). A term exactly on its cusp (R = 1, s = 0)
    contributes 0 to the gradient (0 is in its subgradient).
    """
    st, ct = t.sin().unsqueeze(-1), t.cos().unsqueeze(-1)
    rs, d2, tmp = ws.views(x.shape[0])
    torch.mul(x, st, out=rs)
    rs.addcmul_(y, ct, value=-1)  # R sin s
    torch.addcmul(q, rs, rs, out=d2)  # q + R² sin² s
    d2.sqrt_()  # now the denominator
    g = _mean(rs.div_(d2), w, wsum)
    torch.mul(x, ct, out=tmp)
    tmp.addcmul_(y, st)  # R cos s
    tmp.mul_(q)
    d2.pow_(3)
    h = _mean(tmp.div_(d2), w, wsum)
    return g, h


_ROW_BLOCK = 128


def _solve(x: Tensor, y: Tensor, q: Tensor, w: Tensor | None, theta: float) -> Tensor:
    """Minimise the convex objective over t in [0, θ] for each of B rows of (B, N). Returns (B,).

    Rows are solved in blocks that stay in cache; converged rows leave the active set.
    """
    if x.shape[0] <= _ROW_BLOCK:
        return _solve_block(x, y, q, w, theta)
    parts = [
        _solve_block(
            x[i : i + _ROW_BLOCK],
            y[i : i + _ROW_BLOCK],
            q[i : i + _ROW_BLOCK],
            None if w is None else w[i : i + _ROW_BLOCK],
            theta,
        )
        for i in range(0, x.shape[0], _ROW_BLOCK)
    ]
    return torch.cat(parts)


def _solve_block(x: Tensor, y: Tensor, q: Tensor, w: Tensor | None, theta: float) -> Tensor:
    """Bracketing on the sign of the subgradient with safeguarded Newton steps.

    Starts at the angle of the mean sample vector in the plane (the minimiser of the objective
    linearised around R cos(t - φ) = 1). The sign of the gradient there says which end of
    [0, θ] could hold a boundary minimum; only that end's one-sided slope is evaluated.
    """
    wsum = None if w is None else w.sum(-1)
    t = torch.atan2(_mean(y, w, wsum), _mean(x, w, wsum)).clamp_(0, theta)
    ws = _Workspace(x)
    g, h = _slope_and_curvature(t, x, y, q, w, wsum, ws)
    lo = torch.where(g < 0, t, torch.zeros_like(t))
    hi = torch.where(g < 0, torch.full_like(t, theta), t)
    done = torch.zeros_like(g, dtype=torch.bool)
    # An end can hold the minimum if the gradient points to it, or if the start is already
    # there up to rounding (then the gradient's sign is noise).
    near = 1e-12
    for side, end_t, rows in (
        (1.0, 0.0, (g > 0) | (t <= near)),
        (-1.0, theta, (g < 0) | (t >= theta - near)),
    ):
        idx = rows.nonzero().squeeze(-1)
        if idx.numel():
            ww = None if w is None else w[idx]
            slope = _end_slope(
                end_t, x[idx], y[idx], q[idx], ww, None if wsum is None else wsum[idx], side
            )
            at_end = idx[(slope * side >= 0) & ~done[idx]]  # objective rises from that end
            t[at_end] = end_t
            done[at_end] = True
    done |= g == 0  # a stationary start point is the minimum (convexity)
    idx = (~done).nonzero().squeeze(-1)
    if idx.numel() == 0:
        return t
    ta, lo, hi, g, h = t[idx], lo[idx], hi[idx], g[idx], h[idx]
    xa, ya, qa = x[idx], y[idx], q[idx]
    wa = None if w is None else w[idx]
    wsa = None if wsum is None else wsum[idx]
    step_prev = hi - lo
    # Newton converges quadratically: once its step is below 1e-9 the error left is far
    # below that; a bracket narrower than tol also stops.
    tol = 1e-9
    for it in range(_MAX_ITER):
        if it:
            g, h = _slope_and_curvature(ta, xa, ya, qa, wa, wsa, ws)
            neg = g < 0
            lo = torch.where(neg, ta, lo)
            hi = torch.where(neg, hi, ta)
        newton_step = g / h
        newton = ta - newton_step
        ok = (h > 0) & (newton >= lo) & (newton <= hi)
        ok &= newton_step.abs() < 0.5 * step_prev  # must at least halve the previous step
        t_new = torch.where(ok, newton, 0.5 * (lo + hi))
        done = (g == 0) | (ok & (newton_step.abs() <= tol)) | (hi - lo <= tol)
        t_new = torch.where(g == 0, ta, t_new)
        step_prev = torch.where(ok, newton_step.abs(), hi - lo)
        ta = t_new
        if bool(done.any()):
            t[idx[done]] = ta[done]
            keep = ~done
            if not bool(keep.any()):
                return t
            idx, ta, lo, hi, step_prev = idx[keep], ta[keep], lo[keep], hi[keep], step_prev[keep]
            xa, ya, qa = xa[keep], ya[keep], qa[keep]
            if wa is not None:
                wa, wsa = wa[keep], wsa[keep]
    t[idx] = ta
    return t


def _project(
    log_P: Tensor, labels: Tensor, weights: Tensor | None, name: str
) -> GeodesicProjection:
    """Core of :func:`geodesic_projection_from_log_probs` on (m, N, C) input."""
    C = log_P.shape[-1]
    theta = math.acos(1 / math.sqrt(C))
    x, y, q = _plane_coordinates(log_P, labels, name)
    w = None
    if weights is not None:
        w = weights.to(device=x.device, dtype=x.dtype).expand_as(x)
    t = _solve(x, y, q, w, theta)
    rc = (x * t.cos().unsqueeze(-1) + y * t.sin().unsqueeze(-1)).clamp_(-1, 1)
    dist = _mean(rc.arccos_(), w, None if w is None else w.sum(-1))
    out_dtype = log_P.dtype
    return GeodesicProjection((t / theta).to(out_dtype), dist.to(out_dtype))


def _check_weights(weights: ArrayLike | None, N: int) -> Tensor | None:
    if weights is None:
        return None
    w = as_tensor(weights, "weights", floating=False).to(torch.float64)
    if w.ndim != 1 or w.shape[0] != N:
        raise ValueError(f"`weights` must have shape (N,) = ({N},), got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or float(w.min()) < 0 or float(w.sum()) <= 0:
        raise ValueError("`weights` must be finite, non-negative and not all zero")
    return w


def geodesic_projection_from_log_probs(
    log_P: ArrayLike, labels: ArrayLike, *, weights: ArrayLike | None = None
) -> GeodesicProjection:
    """Progress (eq. 2.2.4) and distance to the ignorance->truth geodesic, from log-probabilities.

    Args:
        log_P: (m, N, C) or (N, C) log-probabilities.
        labels: (N,) integer labels in [0, C).
        weights: optional (N,) non-negative sample weights (the mean over samples in d_G
            becomes a weighted mean).

    Returns:
        :class:`GeodesicProjection` with (m,) tensors (0-dim for a single model).

    Raises:
        ValueError: on wrong shapes, unnormalised rows, NaN, labels out of range.
    """
    L, single = check_log_probabilities(log_P, "log_P", normalised=False)
    y = check_labels(labels, L.shape[1], L.shape[2]).to(L.device)
    res = _project(L, y, _check_weights(weights, L.shape[1]), "log_P")
    if single:
        return GeodesicProjection(res.progress[0], res.distance[0])
    return res


def geodesic_projection(
    P: ArrayLike, labels: ArrayLike, *, weights: ArrayLike | None = None
) -> GeodesicProjection:
    """Progress and distance to the geodesic from probabilities (zeros allowed).

    Args:
        P: (m, N, C) or (N, C) probabilities.
        labels: (N,) integer labels in [0, C).
        weights: optional (N,) sample weights.

    Returns:
        :class:`GeodesicProjection` with (m,) tensors (0-dim for a single model).
    """
    P3, single = check_probabilities(P, "P")
    y = check_labels(labels, P3.shape[1], P3.shape[2]).to(P3.device)
    res = _project(P3.log(), y, _check_weights(weights, P3.shape[1]), "P")
    if single:
        return GeodesicProjection(res.progress[0], res.distance[0])
    return res


def progress(P: ArrayLike, labels: ArrayLike) -> Tensor:
    """Progress of models towards the truth, eq. 2.2.4.

    ``s = argmin_{α ∈ [0, 1]} d_G(P, P^α_{0,*})``: 0 at ignorance, 1 at the truth.

    Args:
        P: (m, N, C) or (N, C) probabilities.
        labels: (N,) integer labels in [0, C).

    Returns:
        (m,) progress in [0, 1], or a 0-dim tensor for a single model.

    Example::

        >>> y = torch.tensor([0, 1, 2])
        >>> float(progress(torch.eye(3, dtype=torch.float64), y))
        1.0
    """
    return geodesic_projection(P, labels).progress


def progress_from_log_probs(log_P: ArrayLike, labels: ArrayLike) -> Tensor:
    """Progress (eq. 2.2.4) from log-probabilities; see :func:`progress`."""
    return geodesic_projection_from_log_probs(log_P, labels).progress


def per_class_progress_from_log_probs(log_P: ArrayLike, labels: ArrayLike) -> Tensor:
    """Progress restricted to the samples of each class (thesis fig. 3.2a).

    Args:
        log_P: (m, N, C) or (N, C) log-probabilities.
        labels: (N,) integer labels in [0, C).

    Returns:
        (m, C) progress per class ((C,) for a single model); NaN for a class with no sample.
    """
    L, single = check_log_probabilities(log_P, "log_P", normalised=False)
    m, N, C = L.shape
    y = check_labels(labels, N, C).to(L.device)
    x, yy, q = _plane_coordinates(L, y, "log_P")
    theta = math.acos(1 / math.sqrt(C))
    # One padded row per (model, class) holding that class's samples; padding has weight 0.
    counts = torch.bincount(y, minlength=C)
    width = int(counts.max())
    order = torch.argsort(y, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(width, device=y.device)
    slot = starts[:, None] + pos[None, :]  # (C, width) positions in the class-sorted order
    real = pos[None, :] < counts[:, None]
    cols = order[torch.where(real, slot, torch.zeros_like(slot)).clamp_max(N - 1)]  # (C, width)
    rows = lambda v: v[:, cols].reshape(m * C, width)  # noqa: E731
    w = real.to(x.dtype).expand(m, C, width).reshape(m * C, width)
    present = (counts > 0).repeat(m)
    out = torch.full((m * C,), math.nan, dtype=torch.float64, device=L.device)
    if bool(present.any()):
        sel = present.nonzero().squeeze(-1)
        xs, ys, qs = rows(x)[sel], rows(yy)[sel], rows(q)[sel]
        out[sel] = _solve(xs, ys, qs, w[sel], theta) / theta
    out = out.reshape(m, C)
    out = out.to(L.dtype)
    return out[0] if single else out
