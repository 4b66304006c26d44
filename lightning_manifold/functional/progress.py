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
for many models at once by safeguarded Newton steps (a bracket on the sign of the slope), the
first ones in float32, the last in float64, to ``PROGRESS_TOLERANCE`` (:func:`_newton`).

Speed comes from doing few passes over (models, samples) arrays: the (m, N, C) input is read
once into per-sample plane coordinates, and each Newton step is about ten elementwise passes
over chunks small enough to stay in cache.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
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
    "PROGRESS_TOLERANCE",
    "GeodesicProjection",
    "geodesic_projection",
    "geodesic_projection_from_log_probs",
    "per_class_progress_from_log_probs",
    "progress",
    "progress_from_log_probs",
]

#: How closely progress (in units of θ, the angle from ignorance to truth) is solved for:
#: every float64 result is within this of a minimiser of the float64 objective, certified by
#: the signs of its slope on both sides (so also where the minimum is flat); results of the
#: same model alone or in a batch may differ by up to twice this. Float32 results are that
#: value rounded to float32.
PROGRESS_TOLERANCE = 1e-9
_MAX_ITER = 200
# Relative margin within which the wrong classes' spread is recomputed as a sum of squares.
_FLAT_SPREAD = 1e-6
# Float32 Newton steps run until every row is predicted this close; they keep a curvature for
# steps within _COARSE_CHORD of it.
_COARSE = 1e-4
_COARSE_CHORD = 1e-2
_COARSE_STEPS = 8
_COARSE_ELEMENTS = 1 << 16  # models x samples from which the float32 steps pay off

# Elementwise work runs on chunks of rows whose (rows, N) float64 arrays take about 1 MiB, so
# the dozen passes of one evaluation stay in cache; the solver's bookkeeping runs once per
# Newton step over all models (a few microseconds per small op add up). The (m, N) arrays are
# built for at most _SOLVE_ELEMENTS samples x models at a time, which bounds memory.
_CACHE_ELEMENTS = 1 << 17
_SOLVE_ELEMENTS = 1 << 22
# On accelerators large chunks keep the device busy instead.
_DEVICE_ELEMENTS = 1 << 24
# Rows x samples up to which :func:`_solve_small` replaces :func:`_newton` (a capture's model
# and its per-class rows), its fixed Newton steps, and the slope points per pass of
# :func:`_bracket_search` (each pass narrows a bracket (K + 1)-fold).
_SMALL_ELEMENTS = 1 << 15
_EPS64 = 2.0**-52
# Small problems on the CPU go through numpy (see below); the tests also run the torch path.
_SMALL_ON_HOST = True
_SMALL_NEWTON = 8
_GRID_POINTS = 15


class GeodesicProjection(NamedTuple):
    """Projection of models onto the ignorance->truth geodesic.

    Attributes:
        progress: (m,) progress ``s`` in [0, 1] (eq. 2.2.4); 0-dim for a single model.
        distance: (m,) geodesic distance d_G (eq. 2.5.4) from each model to the geodesic point
            at its progress: how far the model is off the straight path to the truth.
    """

    progress: Tensor
    distance: Tensor


def _chunk_rows(N: int, device: torch.device, elements: int = _CACHE_ELEMENTS) -> int:
    """Rows of N samples per chunk of about ``elements`` values."""
    if device.type != "cpu":
        elements = max(elements, _DEVICE_ELEMENTS)
    return max(1, elements // N)


def _plane_coordinates(
    src: Tensor, labels: Tensor, from_log: bool, name: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Coordinates of each sample in the ignorance/truth plane, in float64.

    With ``a = Σ_c sqrt(p_c / C)`` (the Bhattacharyya coefficient with ignorance) and
    ``b = sqrt(p[y])`` (with the truth): ``x = R cos φ = a``, ``y = R sin φ = (b - a cos θ) /
    sin θ``. Also checks that every row is normalised, on values computed anyway. The
    sqrt-probabilities go through one small reused buffer, a few models at a time, so the
    (m, N, C) input is read once and only chunk-sized temporaries are allocated.

    Args:
        src: (m, N, C) log-probabilities (``from_log``) or probabilities.
        labels: (N,) int64.
        from_log: whether ``src`` holds log-probabilities.
        name: argument name for error messages.

    Returns:
        xy: (m, 2, N) with ``x`` and ``y`` of each model side by side (one rotation turns
        them into ``R sin(t - φ)`` and ``R cos(t - φ)``); q: (m, N) ``Σ_c p - R²``, the
        squared distance of the sample from the plane (at least the smallest normal float,
        so no gradient divides 0 by 0); sums: (m, 2) ``Σ_n (x, y)``.

    ``q`` sets the width of a sample's cusp, so it is computed without cancellation: it is
    the spread of the wrong classes, ``Σ_{c≠y} p_c - (Σ_{c≠y} sqrt p_c)² / (C - 1)``, whose
    rounding error is relative to the wrong-class mass, not to 1 (and, where the wrong
    classes are nearly equal, a sum of squared deviations). (``Σ_c p - x² - y²`` has
    an error of ~1e-16 and makes every confident sample a cusp smoothed over ~1e-8, which
    moves a kinked minimum by as much.)
    """
    m, N, C = src.shape
    kw = {"dtype": torch.float64, "device": src.device}
    # x and y each contiguous (a (2, m, N) buffer), seen as (m, 2, N) by the rotation
    planes, q = torch.empty(2, m, N, **kw), torch.empty(m, N, **kw)
    rows = min(m, _chunk_rows(N * C, src.device, 2 * _CACHE_ELEMENTS))
    buffer = torch.empty(rows, N, C, **kw)
    label_index = labels.view(1, N, 1).expand(rows, N, 1).contiguous()
    # Per chunk: min and max of Σ_c p; checked once, with the row sums of x and y (NaN for
    # negative probabilities, whose square roots are NaN).
    stats, sums = torch.empty(-(-m // rows), 2, **kw), torch.empty(2, m, **kw)
    for k, i in enumerate(range(0, m, rows)):
        n = min(rows, m - i)
        P, chunk = buffer[:n], src[i : i + n]
        if from_log:  # upcast first: an op into float64 still computes in float32
            P = torch.exp(chunk if chunk.dtype == P.dtype else P.copy_(chunk), out=P)
        else:  # a copy: the label column is zeroed
            P.copy_(chunk)
        x, y, q[i : i + n], total = _plane_rows(P, label_index[:n], labels)
        planes[0, i : i + n], planes[1, i : i + n] = x, y
        torch.aminmax(total, out=(stats[k, 0], stats[k, 1]))
        torch.sum(planes[:, i : i + n], -1, out=sums[:, i : i + n])
    try:
        check_row_sums(stats.add(sums.sum() * 0), name)
    except ValueError:
        if not from_log:  # say exactly what is wrong with the probabilities
            check_probabilities(src, name)
        raise
    q.clamp_(min=torch.finfo(torch.float64).tiny)
    return planes.transpose(0, 1), q, sums.T


def _weighted_sum(v: Tensor, w: Tensor | None, out: Tensor | None = None) -> Tensor:
    """Σ_n w_n v[..., n] for (B, N) ``v``; ``w`` is None (all ones), (N,) or (B, N)."""
    if w is None:
        return torch.sum(v, -1, out=out)
    if w.ndim == 1:
        return torch.mv(v, w, out=out)
    return torch.linalg.vecdot(v, w, out=out)


def _rotation(t: Tensor, *angles: float) -> Tensor:
    """(B, k, 2) rows ``(sin(t + a), -cos(t + a))`` for each angle ``a``.

    Applied to ``(x, y) = R (cos φ, sin φ)`` a row gives ``R sin(t + a - φ)``: ``a = 0`` is
    ``R sin s`` and ``a = π/2`` is ``R cos s`` for ``s = t - φ``. One batched matrix product
    does both at half the cost of the four elementwise passes.
    """
    return torch.stack([torch.stack([(t + a).sin(), -(t + a).cos()], -1) for a in angles], 1)


class _Objective:
    """The objective's slope and curvature in t = αθ for (B, N) rows, chunk by chunk.

    With ``s = t - φ``: d/dt arccos(R cos s) = R sin s / sqrt(q + R² sin² s), and the second
    derivative is R cos s · q / (q + R² sin² s)^(3/2). A term exactly on its cusp (R = 1,
    s = 0) contributes 0 to the slope (0 is in its subgradient) and an infinite curvature.
    Sums over samples are not divided by N (or by the total weight): only the Newton step
    ``slope / curvature`` and the slope's sign are used.
    """

    def __init__(self, xy: Tensor, q: Tensor, w: Tensor | None) -> None:
        self.xy, self.q, self.w = xy, q, w
        self.rows = min(q.shape[0], _chunk_rows(q.shape[1], q.device))
        self.rotated = torch.empty(self.rows * 2 * q.shape[1], dtype=q.dtype, device=q.device)
        self.r = torch.empty(self.rows, q.shape[1], dtype=q.dtype, device=q.device)
        self.s = torch.empty_like(self.r)
        self._split()

    def _split(self) -> None:
        """Chunk views of the per-row arrays, made once rather than on every evaluation."""
        n, w = self.rows, self.w
        ws = w.split(n) if w is not None and w.ndim == 2 else [w] * len(self.q.split(n))
        self.chunks = list(zip(self.xy.split(n), self.q.split(n), ws))

    def keep(self, rows: Tensor) -> None:
        """Drop every row not in ``rows`` (solved rows then cost nothing)."""
        self.xy, self.q = self.xy[rows], self.q[rows]
        if self.w is not None and self.w.ndim == 2:
            self.w = self.w[rows]
        self._split()

    def _weights(self, rows: Tensor) -> Tensor | None:
        return self.w if self.w is None or self.w.ndim == 1 else self.w[rows]

    def derivatives(
        self, t: Tensor, curvature: bool = True, third: bool = False
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Slope, curvature (if ``curvature``) and third derivative (if ``third``) at (B,) t.

        The third derivative of arccos(R cos s) is -q R sin s (1 + 3 R² cos² s / D) / D^(3/2)
        with D = q + R² sin² s. Returns (B,) tensors (None for those not asked for).
        """
        third = third and curvature
        rot = _rotation(t, 0.0, math.pi / 2) if curvature else _rotation(t, 0.0)
        g = torch.empty_like(t)
        h = torch.empty_like(t) if curvature else g
        g3 = torch.empty_like(t) if third else g
        n = self.rows
        chunks = zip(self.chunks, rot.split(n), g.split(n), h.split(n), g3.split(n))
        for (xy, q, w), rot_i, gi, hi, g3i in chunks:
            b, k, N = xy.shape[0], rot.shape[1], xy.shape[2]
            uc = torch.bmm(rot_i, xy, out=self.rotated[: b * k * N].view(b, k, N))
            u, c, r = uc[:, 0], uc[:, -1], self.r[:b]  # R sin s, R cos s
            torch.addcmul(q, u, u, out=r).sqrt_().reciprocal_()  # rsqrt_ is slower
            _weighted_sum(u.mul_(r), w, out=gi)  # u is now R sin s / sqrt(D)
            if not curvature:
                continue
            if not third:
                _weighted_sum(c.mul_(q).mul_(r.pow_(3)), w, out=hi)
                continue
            qr2 = torch.mul(r, r, out=self.s[:b]).mul_(q)  # q / D
            c.mul_(r)  # R cos s / sqrt(D)
            _weighted_sum(torch.mul(c, qr2, out=r), w, out=hi)
            _weighted_sum(c.square_().mul_(-3).sub_(1).mul_(u).mul_(qr2), w, out=g3i)
        return g, h if curvature else None, g3 if third else None

    def end_slope(self, rows: Tensor, t: float, side: float) -> Tensor:
        """One-sided slope at an end of [0, θ] (side +1: right, -1: left) for ``rows``."""
        return _end_slope(self.xy[rows], self.q[rows], self._weights(rows), t, side)


# The functions from here to :func:`_certify` take torch tensors or, for small problems on the
# CPU, numpy arrays (a numpy operation costs about a microsecond, a torch one several, and a
# capture's solve is hundreds of operations on arrays of a thousand values): one code for both.
Array = Any  # Tensor | np.ndarray, float64


def _take_at(a: Array, index: Array, axis: int) -> Array:
    """``a``'s entries at ``index`` along ``axis`` (gather / take_along_axis)."""
    if isinstance(a, Tensor):
        return torch.gather(a, axis, index)
    return np.take_along_axis(a, index, axis)


def _zero_at(a: Array, index: Array, axis: int) -> None:
    """Set ``a``'s entries at ``index`` along ``axis`` to 0, in place."""
    if isinstance(a, Tensor):
        a.scatter_(axis, index, 0.0)
    else:
        np.put_along_axis(a, index, 0.0, axis)


def _plane_rows(P: Array, label_index: Array, labels: Array) -> tuple[Array, Array, Array, Array]:
    """The formulas of :func:`_plane_coordinates` on one chunk (torch or numpy).

    Args:
        P: (n, N, C) float64 probabilities, used as scratch (it ends up holding the square
            roots with the label column zeroed).
        label_index: (n, N, 1) int64 labels; labels: (N,) the same.

    Returns:
        (n, N) each: ``x``, ``y``, ``q`` (not yet floored) and ``Σ_c p`` (for the row-sum check).
    """
    xp = _xp(P)
    C = P.shape[-1]
    cos_t, sin_t = 1 / math.sqrt(C), math.sqrt(1 - 1 / C)
    py = _take_at(P, label_index, 2)[..., 0]  # p[y]
    _zero_at(P, label_index, 2)
    wrong = P.sum(-1)  # Σ_{c≠y} p
    total = wrong + py  # Σ_c p: 1 if normalised
    S = xp.sqrt(P, out=P)
    b = xp.sqrt(py)  # sqrt(p[y])
    s = S.sum(-1)  # Σ_{c≠y} sqrt p
    spread = s * s / max(C - 1, 1)
    # Wrong classes (nearly) equal: q is all cancellation; sum squared deviations instead.
    flat = xp.where(spread >= (1 - _FLAT_SPREAD) * wrong)
    q = wrong - spread
    if flat[0].shape[0]:
        dev = S[flat] - (s[flat] / max(C - 1, 1))[:, None]  # (k, C), label column 0
        _zero_at(dev, labels[flat[1]][:, None], 1)
        q[flat] = (dev * dev).sum(-1)
    x = (s + b) * cos_t
    return x, (b - x * cos_t) / sin_t, q, total


def _xp(a: Array) -> Any:
    """The array module of ``a``: torch or numpy."""
    return torch if isinstance(a, Tensor) else np


def _copy(a: Array) -> Array:
    return a.clone() if isinstance(a, Tensor) else a.copy()


def _grid_fractions(like: Array, k: int) -> Array:
    """(k,) fractions 1/(k+1) .. k/(k+1) of a bracket, an array of the kind of ``like``."""
    if isinstance(like, Tensor):
        return torch.arange(1, k + 1, dtype=like.dtype, device=like.device) / (k + 1)
    return np.arange(1, k + 1, dtype=like.dtype) / (k + 1)


def _weighted_rows(v: Array, w: Array | None) -> Array:
    """Σ_n w_n v[b, ..., n] for (B, ..., N) ``v``; ``w`` is None, (N,) or (B, N).

    The allocating, numpy-or-torch form for the small solver; :func:`_weighted_sum` writes
    (B, N) sums into preallocated buffers for the large-problem Newton loop.
    """
    if w is None:
        return v.sum(-1)
    if w.ndim == 1:
        return v @ w
    wb = w.reshape(w.shape[0], *([1] * (v.ndim - 2)), w.shape[1])
    return (v * wb).sum(-1)


def _end_slope(xy: Array, q: Array, w: Array | None, t: float, side: float) -> Array:
    """(B,) one-sided slopes at the end ``t`` of [0, θ] (side +1: right, -1: left).

    A term sitting exactly on its cusp there contributes ``side`` (|t - φ| seen from inside).
    """
    xp = _xp(q)
    rs = xy[:, 0] * math.sin(t) - xy[:, 1] * math.cos(t)  # R sin(t - φ)
    terms = rs / xp.sqrt(q + rs * rs)
    # On the cusp up to rounding: ignorance and truth themselves land here exactly.
    noise = 32 * _EPS64
    cusp = (q <= noise) & (abs(rs) <= noise)
    terms = xp.where(cusp, side, terms)
    return _weighted_rows(terms, w)


def _slope_and_curvature(xy: Array, q: Array, w: Array | None, t: Array) -> tuple[Array, Array]:
    """(B,) slope and curvature at (B,) angles ``t`` (see :class:`_Objective`), unchunked."""
    xp = _xp(q)
    sin, cos = xp.sin(t)[:, None], xp.cos(t)[:, None]
    x, y = xy[:, 0], xy[:, 1]
    u = x * sin - y * cos  # R sin(t - φ)
    c = x * cos + y * sin  # R cos(t - φ)
    r = 1 / xp.sqrt(q + u * u)
    return _weighted_rows(u * r, w), _weighted_rows(c * q * (r * r * r), w)


def _grid_slopes(xy: Array, q: Array, w: Array | None, t: Array) -> Array:
    """(B, K) slopes of the objective at (B, K) angles ``t``, K points of each row at once.

    Args:
        xy: (B, 2, N), q: (B, N) plane coordinates; w: None, (N,) or (B, N) weights.
        t: (B, K) angles.
    """
    xp = _xp(q)
    B, K = t.shape
    device = q.device if isinstance(q, Tensor) else torch.device("cpu")
    rows = min(B, _chunk_rows(K * q.shape[1], device))
    parts = []
    for i in range(0, B, rows):
        ti = t[i : i + rows]
        rot = xp.stack([xp.sin(ti), -xp.cos(ti)], -1)  # (b, K, 2)
        u = rot @ xy[i : i + rows]  # R sin(t - φ), (b, K, N)
        v = u / xp.sqrt(q[i : i + rows, None] + u * u)
        parts.append(_weighted_rows(v, w if w is None or w.ndim == 1 else w[i : i + rows]))
    return parts[0] if len(parts) == 1 else xp.concatenate(parts)


def _bracket_search(
    xy: Array, q: Array, w: Array | None, lo: Array, hi: Array, theta: float
) -> Array:
    """Minimisers within ``PROGRESS_TOLERANCE · θ`` of the midpoint of (B,) brackets.

    Each pass evaluates the slope at ``_GRID_POINTS`` evenly spaced interior points of every
    row's bracket in one batched evaluation and keeps the sub-interval where the slope's sign
    changes: the first point of slope >= 0 and the point before it (slope < 0). By convexity a
    minimiser stays inside, whatever the curvature (kinks and flat minima included), and every
    pass narrows the bracket (K + 1)-fold, so the number of passes is fixed by the widest row.

    Args:
        xy, q, w: as for :func:`_grid_slopes`.
        lo, hi: (B,) brackets, slope <= 0 at ``lo`` (or ``lo = 0``) and >= 0 at ``hi`` (or
            ``hi = θ``).

    Returns:
        (B,) angles.
    """
    xp = _xp(q)
    tol = PROGRESS_TOLERANCE * theta
    k = _GRID_POINTS
    width = xp.clip(hi - lo, 0, None)
    widest = float(width.max()) if width.shape[0] else 0.0
    passes = math.ceil(math.log(widest / (2 * tol)) / math.log(k + 1)) if widest > 2 * tol else 0
    frac = _grid_fractions(lo, k)
    for _ in range(passes):
        step = width / (k + 1)
        g = _grid_slopes(xy, q, w, lo[:, None] + width[:, None] * frac)
        below = xp.count_nonzero(xp.cumsum(g >= 0, -1) == 0, -1)  # points before the change
        lo = lo + below * step
        width = step
    return lo + 0.5 * width


def _snap_to_ends(xy: Array, q: Array, w: Array | None, t: Array, theta: float) -> Array:
    """Rows within ``2 · PROGRESS_TOLERANCE · θ`` of an end whose one-sided slope there says
    the minimum is at the end get exactly that end (ignorance 0, truth θ, without rounding)."""
    xp = _xp(q)
    near = 2 * PROGRESS_TOLERANCE * theta
    low, high = t <= near, t >= theta - near
    if not bool((low | high).any()):
        return t
    t = _copy(t)
    for end, side, close in ((0.0, 1.0, low), (theta, -1.0, high)):
        rows = xp.where(close)[0]
        if rows.shape[0]:
            wr = w if w is None or w.ndim == 1 else w[rows]
            at_end = rows[_end_slope(xy[rows], q[rows], wr, end, side) * side >= 0]
            t[at_end] = end
    return t


def _start(xy: Array, w: Array | None, theta: float, sums: Array | None = None) -> Array:
    """(B,) start angles: the angle of each row's (weighted) mean sample vector in the plane
    (the minimiser of the objective linearised around R cos(t - φ) = 1), in [0, θ]."""
    xp = _xp(xy)
    if sums is None:
        sums = _weighted_rows(xy, w)
    return xp.clip(xp.arctan2(sums[:, 1], sums[:, 0]), 0, theta)


def _solve_on_host(
    xy: np.ndarray, q: np.ndarray, w: np.ndarray | None, theta: float, sums: np.ndarray | None
) -> np.ndarray:
    """:func:`_solve` of a small problem given as numpy arrays (a capture on the CPU)."""
    with np.errstate(all="ignore"):  # inf/NaN on cusps are handled, as in torch
        return _solve_small(xy, q, w, _start(xy, w, theta, sums), theta)


def _solve_small(xy: Array, q: Array, w: Array | None, t: Array, theta: float) -> Array:
    """Minimisers for few rows x samples, where each array operation's fixed cost dominates.

    At most ``_SMALL_NEWTON`` safeguarded float64 Newton steps from the (B,) starts ``t``
    (until no row moves by more than the tolerance; a step beyond an end of [0, θ] not yet
    evaluated goes to that end once, since minima often sit exactly there, otherwise a step
    that leaves the bracket bisects it), then :func:`_certify`; rows that fail (kinked or flat
    minima) are finished there by :func:`_bracket_search`.
    """
    xp = _xp(q)
    tol = PROGRESS_TOLERANCE * theta
    lo, hi = xp.zeros_like(t), xp.full_like(t, theta)
    tried = t != t  # an end was already jumped to (all False)
    for _ in range(_SMALL_NEWTON):
        g, h = _slope_and_curvature(xy, q, w, t)
        lo = xp.where(g < 0, t, lo)
        hi = xp.where(g > 0, t, hi)
        newton = t - g / h  # 0 / inf on a cusp is 0: kept; NaN is refused below
        # (at an end of the bracket only when the step is below rounding: converged)
        ok = (newton >= lo) & (newton <= hi)
        to_low = (newton < lo) & (lo == 0) & ~tried
        to_high = (newton > hi) & (hi == theta) & ~tried
        tried = tried | to_low | to_high
        jump = xp.where(to_low, lo, xp.where(to_high, hi, 0.5 * (lo + hi)))
        moved = xp.where(g == 0, t, xp.where(ok, newton, jump))
        settled = bool((abs(moved - t) <= tol).all())  # the certificate below decides
        t = moved
        if settled:
            break
    t = _certify(xy, q, w, t, lo, hi, theta)
    return _snap_to_ends(xy, q, w, xp.clip(t, 0, theta), theta)


def _certify(
    xy: Array, q: Array, w: Array | None, t: Array, lo: Array, hi: Array, theta: float
) -> Array:
    """Make every (B,) ``t`` within ``PROGRESS_TOLERANCE · θ`` of a minimiser, provably.

    The objective is convex, so slopes (float64) of sign <= 0 at ``t - tol`` and >= 0 at
    ``t + tol`` put a minimiser within ``tol`` of ``t`` (an end of [0, θ] within ``tol`` needs
    no test); both are evaluated in one batch. A row that fails (its minimum is flat and
    kinked: samples on or near their cusps, where Newton's error prediction does not hold) is
    finished by :func:`_bracket_search` inside its bracket ``[lo, hi]`` (slope <= 0 at ``lo``,
    >= 0 at ``hi``) narrowed by the two tests.

    Args:
        xy, q, w: as for :func:`_grid_slopes`, all B rows.
        t, lo, hi: (B,) angles and brackets.
    """
    xp = _xp(q)
    tol = PROGRESS_TOLERANCE * theta
    left, right = t - tol, t + tol
    g = _grid_slopes(xy, q, w, xp.stack([left, right], -1))
    left_ok = (left <= 0) | (g[:, 0] <= 0)  # a minimiser at or right of `left`
    right_ok = (right >= theta) | (g[:, 1] >= 0)  # ... at or left of `right`
    bad = ~(left_ok & right_ok)
    if not bool(bad.any()):
        return t
    rows = xp.where(bad)[0]
    lo_ok, hi_ok = left_ok[rows], right_ok[rows]
    l_r, r_r, lo_r, hi_r = left[rows], right[rows], lo[rows], hi[rows]
    # A test that held bounds the minimiser on its side; one that failed, on the other.
    lo_r = xp.maximum(lo_r, xp.where(lo_ok, l_r, xp.where(hi_ok, lo_r, r_r)))
    hi_r = xp.minimum(hi_r, xp.where(hi_ok, r_r, xp.where(lo_ok, hi_r, l_r)))
    lo_r = xp.clip(lo_r, 0, theta)
    hi_r = xp.maximum(xp.clip(hi_r, 0, theta), lo_r)
    wr = w if w is None or w.ndim == 1 else w[rows]
    out = _copy(t)
    out[rows] = _bracket_search(xy[rows], q[rows], wr, lo_r, hi_r, theta)
    return out


def _newton(
    fine: _Objective, coarse: _Objective | None, t: Tensor, theta: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Minimise the convex objective over t in [0, θ] from (B,) float64 start points.

    Returns (B,) minimisers and the (B,) lower and upper ends of each row's bracket (float64
    slope signs at evaluated points), for :func:`_certify`.

    Newton steps, safeguarded by a bracket on the sign of the slope (bisection when a step
    leaves the bracket or fails to halve the one before). An end of [0, θ] is tested as the
    minimum (its one-sided slope, in float64) only when the start is there or the iteration
    heads for it. A curvature h is kept for chord steps (only the slope is evaluated, about
    60% of the cost) while every row is within reach of where h was taken.

    First ``coarse`` (the objective in float32: half the memory traffic, twice the SIMD
    width), until every row's next error is predicted below ``_COARSE`` as K δ², with
    K = |h'| / 2h measured from the last two curvatures (or for at most ``_COARSE_STEPS``
    steps); chord steps reach ``_COARSE_CHORD``. No row stops there: near the minimum float32
    slopes are rounding noise. Then ``fine`` (float64): every fresh curvature comes with the
    third derivative, so K is known locally (the larger of that and the measured one is
    used), and a curvature is kept while it is predicted within 1% (2 K |t - t_h| <= 0.01).
    A row stops when its bracket is narrower than ``PROGRESS_TOLERANCE · θ``, or when its
    step, or the error predicted to be left after it (K δ² after a Newton step, plus
    2 K |t - t_h| δ after a chord step), is below that. The prediction is not a bound where
    samples sit on or near their cusps (flat, piecewise-linear minima of confident models):
    :func:`_certify` checks every row afterwards.
    """
    tol = PROGRESS_TOLERANCE * theta
    out = t.clone()
    out_lo, out_hi = torch.zeros_like(t), torch.full_like(t, theta)
    B = t.shape[0]
    live = torch.ones(B, dtype=torch.bool, device=t.device)
    checked = {1.0: torch.zeros_like(live), -1.0: torch.zeros_like(live)}
    ends = {1.0: 0.0, -1.0: theta}
    idx = torch.arange(B, device=t.device)

    def test_end(want: Tensor, side: float) -> None:
        """Finish the rows of ``want`` whose minimum is at the end on ``side``."""
        rows = want.nonzero().squeeze(-1)
        if rows.numel():
            at_end = rows[fine.end_slope(rows, ends[side], side) * side >= 0]
            out[idx[at_end]] = out_lo[idx[at_end]] = out_hi[idx[at_end]] = ends[side]
            live[at_end] = False
            checked[side][rows] = True

    # A start at an end up to rounding: the slope there is noise, so test the end itself.
    near = 1e-12
    test_end(t <= near, 1.0)
    test_end((t >= theta - near) & live, -1.0)

    lo, hi = torch.zeros_like(t), torch.full_like(t, theta)
    halve = hi - lo  # a Newton step must be shorter than half of this
    # curvature, where it was taken, and K = |h'| / 2h
    h, t_h, K = torch.zeros_like(t), torch.full_like(t, math.inf), torch.zeros_like(t)
    f = fine if coarse is None else coarse
    h_fine = False  # whether h is a float64 curvature
    for it in range(_MAX_ITER):
        n_live = int(live.sum())
        if n_live == 0:
            return out, out_lo, out_hi
        if n_live <= live.numel() // 2:  # compact: solved rows stop costing passes
            keep = live.nonzero().squeeze(-1)
            for obj in (fine, coarse):
                if obj is not None:
                    obj.keep(keep)
            idx, t, lo, hi, halve = idx[keep], t[keep], lo[keep], hi[keep], halve[keep]
            h, t_h, K, live = h[keep], t_h[keep], K[keep], live[keep]
            checked = {side: c[keep] for side, c in checked.items()}
        age = (t - t_h).abs()
        if f is fine:  # keep a float64 curvature while it is predicted within 1% (2 K age)
            fresh = not h_fine or bool((live & ~(2 * K * age <= 0.01)).any())
        else:  # chord steps only once K is measured, so the switch below can be decided
            fresh = bool((live & ~((age <= _COARSE_CHORD) & K.isfinite())).any())
        g, h_new, g3 = f.derivatives(t.to(f.q.dtype), curvature=fresh, third=f is fine)
        g = g.to(t.dtype)
        if h_new is not None:
            h_new = h_new.to(t.dtype)
            K = (h_new - h).abs_().div_(age).div_(2 * h_new)
            K = torch.where(age.isfinite() & (age > 0), K, math.inf)  # no earlier curvature
            h, t_h, h_fine, age = h_new, t, f is fine, torch.zeros_like(t)
        if g3 is not None:  # a fresh float64 Newton step leaves about K δ², K = |h'| / 2h
            K = torch.maximum(K, g3.abs().div_(2 * h))  # local, or over the last step if larger
        neg = g < 0
        lo = torch.where(neg, t, lo)
        hi = torch.where(neg, hi, t)
        step = g / h
        size = step.abs()
        newton = t - step
        # size > 0 also refuses an infinite curvature (a sample exactly on its cusp).
        ok = (newton >= lo) & (newton <= hi) & (size < 0.5 * halve) & (size > 0)
        if not bool(ok.all()):  # heading for an end that may hold the minimum: test it once
            bad = ~ok & live
            test_end(bad & (g > 0) & (lo == 0) & ~checked[1.0], 1.0)
            test_end(bad & neg & (hi == theta) & ~checked[-1.0], -1.0)
        # The error left: about K δ² after a Newton step, plus 2 K |t - t_h| δ after a chord
        # step (the kept curvature is off by that fraction), with K measured in float64.
        small = (size <= tol) | (K * size * (size + 2 * age) <= tol)
        done = live & (ok & small | (hi - lo <= tol) | (g == 0))
        t = torch.where(ok, newton, torch.where(g == 0, t, 0.5 * (lo + hi)))
        halve = torch.where(ok, size, hi - lo)
        if f is coarse:
            # (A float32 slope of exactly 0 gives 0 * inf = NaN: ready too.)
            if it >= _COARSE_STEPS or not bool((live & (K * size * size > _COARSE)).any()):
                f = fine  # the bracket and step history start afresh
                lo, hi = torch.zeros_like(t), torch.full_like(t, theta)
                halve = hi - lo
            continue
        if bool(done.any()):
            out[idx[done]] = t[done]
            out_lo[idx[done]], out_hi[idx[done]] = lo[done], hi[done]
            live &= ~done
    out[idx[live]] = t[live]
    out_lo[idx[live]], out_hi[idx[live]] = lo[live], hi[live]
    return out, out_lo, out_hi


def _solve(
    xy: Tensor, q: Tensor, w: Tensor | None, theta: float, sums: Tensor | None = None
) -> Tensor:
    """Progress angle t = αθ in [0, θ] minimising the objective, for each of B rows. (B,).

    Starts at the angle of the mean sample vector in the plane (the minimiser of the objective
    linearised around R cos(t - φ) = 1), typically 0.03 from the minimum; :func:`_newton`
    and :func:`_certify` finish to ``PROGRESS_TOLERANCE`` (typically two float32 Newton
    steps and a chord step, one float64 Newton step, then two float64 slopes). Small problems
    (a capture's one model and its classes) go through :func:`_solve_small` instead, whose
    few fixed steps cost fewer tensor operations than the bookkeeping of :func:`_newton`.

    Args:
        xy: (B, 2, N), q: (B, N) float64 plane coordinates (:func:`_plane_coordinates`).
        w: None, (N,) or (B, N) float64 sample weights.
        theta: the angle between ignorance and truth.
        sums: (B, 2) ``Σ_n w_n (x, y)`` if already known.
    """
    if q.numel() <= _SMALL_ELEMENTS:
        if q.device.type != "cpu" or not _SMALL_ON_HOST:  # accelerators: the torch code
            return _solve_small(xy, q, w, _start(xy, w, theta, sums), theta)
        host = [None if a is None else a.detach().numpy() for a in (xy, q, w, sums)]
        return torch.from_numpy(_solve_on_host(host[0], host[1], host[2], theta, host[3]))
    t = _start(xy, w, theta, sums)
    coarse = None
    if q.numel() >= _COARSE_ELEMENTS:  # below that, per-op overhead outweighs bandwidth
        f32 = torch.float32
        q32 = q.to(f32).clamp_(min=torch.finfo(f32).tiny)
        coarse = _Objective(xy.to(f32), q32, None if w is None else w.to(f32))
    t, lo, hi = _newton(_Objective(xy, q, w), coarse, t, theta)
    return _certify(xy, q, w, t, lo, hi, theta)


def _project(
    src: Tensor,
    labels: Tensor,
    weights: Tensor | None,
    name: str,
    *,
    from_log: bool,
    with_distance: bool = True,
) -> GeodesicProjection:
    """Core of the public functions on (m, N, C) probabilities or log-probabilities."""
    m, N, C = src.shape
    theta = math.acos(1 / math.sqrt(C))
    kw = {"dtype": torch.float64, "device": src.device}
    w = None if weights is None else weights.to(**kw)
    t = torch.empty(m, **kw)
    dist = torch.full((m,), math.nan, **kw)
    block = _chunk_rows(N, src.device, _SOLVE_ELEMENTS)
    for i in range(0, m, block):
        xy, q, sums = _plane_coordinates(src[i : i + block], labels, from_log, name)
        n = q.shape[0]
        t[i : i + n] = tb = _solve(xy, q, w, theta, None if w is not None else sums)
        if with_distance:  # d_G = mean arccos(R cos(t - φ)), eq. 2.5.4
            rc = torch.bmm(_rotation(tb, math.pi / 2), xy).squeeze(1)
            _weighted_sum(rc.clamp_(-1, 1).arccos_(), w, out=dist[i : i + n])
    dist /= N if w is None else w.sum()
    return GeodesicProjection((t / theta).to(src.dtype), dist.to(src.dtype))


def _check_weights(weights: ArrayLike | None, N: int) -> Tensor | None:
    if weights is None:
        return None
    w = as_tensor(weights, "weights", floating=False).to(torch.float64)
    if w.ndim != 1 or w.shape[0] != N:
        raise ValueError(f"`weights` must have shape (N,) = ({N},), got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or float(w.min()) < 0 or float(w.sum()) <= 0:
        raise ValueError("`weights` must be finite, non-negative and not all zero")
    return w


def _projection(
    A: ArrayLike,
    labels: ArrayLike,
    weights: ArrayLike | None,
    *,
    from_log: bool,
    with_distance: bool = True,
) -> GeodesicProjection:
    """Validate the public arguments and project; 0-dim results for a single (N, C) model."""
    name = "log_P" if from_log else "P"
    if from_log:
        T, single = check_log_probabilities(A, name, normalised=False)
    else:  # the values are checked on the square roots the projection computes anyway
        T, single = check_probabilities(A, name, values=False)
    y = check_labels(labels, T.shape[1], T.shape[2]).to(T.device)
    w = _check_weights(weights, T.shape[1])
    res = _project(T, y, w, name, from_log=from_log, with_distance=with_distance)
    return GeodesicProjection(res.progress[0], res.distance[0]) if single else res


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
    return _projection(log_P, labels, weights, from_log=True)


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

    Raises:
        ValueError: on wrong shapes, rows that are not probabilities, labels out of range.
    """
    return _projection(P, labels, weights, from_log=False)


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
    return _projection(P, labels, None, from_log=False, with_distance=False).progress


def progress_from_log_probs(log_P: ArrayLike, labels: ArrayLike) -> Tensor:
    """Progress (eq. 2.2.4) from log-probabilities; see :func:`progress`."""
    return _projection(log_P, labels, None, from_log=True, with_distance=False).progress


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
    xy, q, _ = _plane_coordinates(L, y, True, "log_P")
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
    w = real.to(q.dtype).expand(m, C, width).reshape(m * C, width)
    present = (counts > 0).repeat(m)
    out = torch.full((m * C,), math.nan, dtype=torch.float64, device=L.device)
    if bool(present.any()):
        sel = present.nonzero().squeeze(-1)
        xy_rows = xy[:, :, cols].transpose(1, 2).reshape(m * C, 2, width)
        q_rows = q[:, cols].reshape(m * C, width)
        out[sel] = _solve(xy_rows[sel], q_rows[sel], w[sel], theta) / theta
    out = out.reshape(m, C)
    out = out.to(L.dtype)
    return out[0] if single else out
