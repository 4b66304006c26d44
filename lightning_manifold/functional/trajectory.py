"""Trajectories re-indexed by progress, distances between them and tube widths.

Thesis eq. 2.2.5 and the text before it: two runs are compared at equal *progress*, not at
equal step, by interpolating each trajectory geodesically (eq. 2.2.3) between consecutive
snapshots.

Re-indexing rule for runs whose progress is not monotone: **first crossing**. A progress value
s is taken from the first pair of consecutive snapshots whose progress interval contains s,
i.e. the first time the run gets that far; later dips below s and re-crossings are ignored.
For values above the starting progress this is the same model as re-indexing the running
maximum of progress; values below the start are covered only if the run dips to them, by the
first downward crossing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_manifold.functional._checks import ArrayLike, as_tensor, check_probabilities
from lightning_manifold.functional.distances import bhattacharyya_coefficients
from lightning_manifold.functional.geodesic import _slerp_weights

__all__ = [
    "reindex_by_progress",
    "trajectory_distance",
    "trajectory_distances",
    "tube_width",
]


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


class _SqrtTrajectory:
    """A validated trajectory in sqrt-probability space with the angle of every segment,
    computed once so that any number of progress values are re-indexed by gathers only."""

    def __init__(self, P: Tensor, s: Tensor) -> None:
        self.A = P.sqrt()  # (T, N, C) on the unit sphere of each sample
        self.s = s  # (T,) float64
        # (T-1, N) angle between consecutive snapshots, eq. 2.2.3
        self.theta = (self.A[:-1] * self.A[1:]).sum(-1).clamp(0, 1).arccos()
        self.lo = torch.minimum(s[:-1], s[1:])
        self.hi = torch.maximum(s[:-1], s[1:])

    def at(self, g: Tensor) -> tuple[Tensor, Tensor]:
        """(S, N, C) unit sqrt-probabilities at progress values ``g`` (NaN where not
        covered) and (S,) bool coverage."""
        A, s = self.A, self.s
        if A.shape[0] == 1:
            hit = g == s[0]
            out = torch.full((g.shape[0], *A.shape[1:]), math.nan, dtype=A.dtype, device=A.device)
            out[hit] = A[0]
            return out, hit
        covers = (g[:, None] >= self.lo[None, :]) & (g[:, None] <= self.hi[None, :])  # (S, T-1)
        valid = covers.any(1)
        seg = torch.argmax(covers.to(torch.int8), dim=1)  # first covering segment
        if bool(valid.all()):  # the usual case: no NaN-filled copy to scatter into
            return self._between(seg, g), valid
        out = torch.full((g.shape[0], *A.shape[1:]), math.nan, dtype=A.dtype, device=A.device)
        idx = valid.nonzero().squeeze(-1)
        if idx.numel():
            out[idx] = self._between(seg[idx], g[idx])
        return out, valid

    def _between(self, k: Tensor, g: Tensor) -> Tensor:
        """(S, N, C) geodesic points at progress ``g`` within segments ``k`` (eq. 2.2.3)."""
        A, s = self.A, self.s
        span = s[k + 1] - s[k]
        alpha = torch.where(span != 0, (g - s[k]) / torch.where(span != 0, span, 1.0), 0)
        w0, w1 = _slerp_weights(self.theta[k], alpha.to(A.dtype)[:, None])
        x = A[k].mul_(w0[..., None]).addcmul_(A[k + 1], w1[..., None])  # in place on gathers
        return x.div_(x.norm(dim=-1, keepdim=True))  # back on the sphere against rounding


def reindex_by_progress(
    P: ArrayLike, progress: ArrayLike, grid: ArrayLike
) -> tuple[Tensor, Tensor]:
    """Sample a trajectory at given progress values by geodesic interpolation.

    For a grid value s between the progress of consecutive snapshots k and k+1, the model is
    the geodesic point (eq. 2.2.3) between them at ``α = (s - s_k) / (s_{k+1} - s_k)``. When
    progress is not monotone the *first crossing* is used: the first segment that reaches s
    (see the module docstring). Vectorised over the grid: one gather per snapshot pair.

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
    if P3.shape[0] == 1:  # the snapshot itself, bit for bit, at its own progress only
        hit = g == s[0]
        out = torch.full((g.shape[0], *P3.shape[1:]), math.nan, dtype=P3.dtype, device=P3.device)
        out[hit] = P3[0]
        return out, hit
    x, valid = _SqrtTrajectory(P3, s).at(g)
    return x.square(), valid


def _check_runs(
    P_runs: Sequence[ArrayLike], progress_runs: Sequence[ArrayLike]
) -> list[_SqrtTrajectory]:
    if len(P_runs) != len(progress_runs):
        raise ValueError(
            f"`progress_runs` must hold one (T,) array per run ({len(P_runs)}), "
            f"got {len(progress_runs)}"
        )
    runs = []
    for i, (P, s) in enumerate(zip(P_runs, progress_runs)):
        P3, s3 = _check_trajectory(P, s, f"P_runs[{i}]", f"progress_runs[{i}]")
        if runs and P3.shape[1:] != runs[0].A.shape[1:]:
            raise ValueError(
                f"`P_runs[{i}]` must have the same (N, C) = {tuple(runs[0].A.shape[1:])} as "
                f"`P_runs[0]`, got {tuple(P3.shape[1:])}"
            )
        if runs:
            P3 = P3.to(device=runs[0].A.device, dtype=runs[0].A.dtype)
            s3 = s3.to(runs[0].s.device)
        runs.append(_SqrtTrajectory(P3, s3))
    return runs


# Samples whose coefficients are multiplied before one log is taken (see _neg_log_mean).
_LOG_GROUP = 16


def _neg_log_mean(bc: Tensor) -> Tensor:
    """``-mean_n log BC``: (N, ...) Bhattacharyya coefficients -> (...) distances d_B.

    One log per product of ``_LOG_GROUP`` coefficients instead of one per sample (the log
    dominated the cost); a group whose product nears underflow is summed log by log.
    """
    bc = bc.clamp(0, 1)
    N = bc.shape[0]
    full = N - N % _LOG_GROUP
    total = bc[full:].log().sum(0)
    if full:
        groups = bc[:full].reshape(full // _LOG_GROUP, _LOG_GROUP, *bc.shape[1:])
        prod = groups
        while prod.shape[1] > 1:  # pairwise halving: contiguous multiplies, no strided prod
            half = prod.shape[1] // 2
            prod = prod[:, :half] * prod[:, half : 2 * half]
        prod = prod[:, 0]
        small = prod < torch.finfo(bc.dtype).tiny ** 0.49  # T with T * T still normal
        logs = torch.where(small, torch.ones_like(prod), prod).log()
        if bool(small.any()):  # rare: tiny or zero coefficients, exactly log by log
            logs = torch.where(small, groups.log().sum(1), logs)
        total = total + logs.sum(0)
    return -total / N


def trajectory_distances(
    P_runs: Sequence[ArrayLike],
    progress_runs: Sequence[ArrayLike],
    *,
    n_points: int = 100,
    chunk: int = 16,
) -> Tensor:
    """Distances between every pair of trajectories at equal progress (eq. 2.2.5), batched.

    For runs u, v with shared progress range [lo, hi] (the overlap of the ranges each visited):
    ``(1 / (hi - lo)) ∫_lo^hi d_B(P_u(s), P_v(s)) ds`` by the trapezoidal rule on the nodes
    ``lo``, every value of the fixed grid ``linspace(0, 1, n_points)`` strictly inside
    (lo, hi), and ``hi``. Dividing by the length keeps runs that do not reach progress 1
    comparable; for runs covering [0, 1] this is eq. 2.2.5 on ``n_points`` equal steps. The
    fixed grid makes a pair's distance independent of the other runs.

    Every run is re-indexed once on the grid (:func:`reindex_by_progress`); the Bhattacharyya
    coefficients of all pairs at equal progress are batched GEMMs of shape (R, C) x (C, R),
    one per (progress value, sample).

    Args:
        P_runs: R trajectories, each (T_r, N, C) probabilities (same N, C).
        progress_runs: R arrays (T_r,) of their progress (eq. 2.2.4).
        n_points: number of values of the fixed progress grid (>= 2).
        chunk: progress values per batched GEMM (bounds memory to chunk * N * R * R).

    Returns:
        (R, R) symmetric distances (float64), zero diagonal.

    Raises:
        ValueError: bad shapes, or two runs that share no progress range (names their index).
    """
    if not isinstance(n_points, int) or isinstance(n_points, bool) or n_points < 2:
        raise ValueError(f"`n_points` must be an integer >= 2, got {n_points!r}")
    runs = _check_runs(P_runs, progress_runs)
    R = len(runs)
    if R == 0:
        raise ValueError("`P_runs` must hold at least one trajectory")
    device = runs[0].A.device
    f64 = torch.float64
    rng = torch.tensor([[float(r.s.min()), float(r.s.max())] for r in runs], dtype=f64)
    lo = torch.maximum(rng[:, None, 0], rng[None, :, 0])  # (R, R)
    hi = torch.minimum(rng[:, None, 1], rng[None, :, 1])
    for i in range(R):
        for j in range(i + 1, R):
            if hi[i, j] <= lo[i, j]:
                raise ValueError(
                    f"runs {i} and {j} share no progress range: run {i} covers "
                    f"[{float(rng[i, 0]):.3g}, {float(rng[i, 1]):.3g}], run {j} covers "
                    f"[{float(rng[j, 0]):.3g}, {float(rng[j, 1]):.3g}]"
                )
    grid = torch.linspace(0.0, 1.0, n_points, dtype=f64)
    # d_B at equal progress on the fixed grid: (S, R, R), NaN where a run is not there
    d_grid = torch.empty((n_points, R, R), dtype=f64)
    iu, ju = torch.triu_indices(R, R, 1, device=device)  # each pair once: half the logs
    for a in range(0, n_points, chunk):
        g = grid[a : a + chunk].to(device)
        x = torch.stack([r.at(g)[0] for r in runs], dim=2)  # (s, N, R, C)
        bc = torch.matmul(x, x.transpose(-1, -2))  # (s, N, R, R) batched GEMM
        d = _neg_log_mean(bc[:, :, iu, ju].transpose(0, 1)).to(device="cpu", dtype=f64)
        d_grid[a : a + chunk, iu.cpu(), ju.cpu()] = d  # (s, pairs); only i < j is read below
    # d_B at each pair's two end points (not on the grid): every run at its 2(R-1) ends
    ends = torch.stack([lo, hi], dim=-1)  # (R, R, 2)
    at_ends = [r.at(ends[i].reshape(-1).to(device))[0].reshape(R, 2, -1, r.A.shape[-1])
               for i, r in enumerate(runs)]  # fmt: skip
    D = torch.zeros((R, R), dtype=f64)
    for i in range(R):
        for j in range(i + 1, R):
            l, h = float(lo[i, j]), float(hi[i, j])
            bc_ends = (at_ends[i][j] * at_ends[j][i]).sum(-1).transpose(0, 1)  # (N, 2)
            d_ends = _neg_log_mean(bc_ends).to(device="cpu", dtype=f64)
            inside = (grid > l) & (grid < h)
            nodes = torch.cat([grid.new_tensor([l]), grid[inside], grid.new_tensor([h])])
            values = torch.cat([d_ends[:1], d_grid[inside, i, j], d_ends[1:]])
            D[i, j] = D[j, i] = torch.trapezoid(values, nodes) / (h - l)
    return D.to(device)


def trajectory_distance(
    P_u: ArrayLike,
    progress_u: ArrayLike,
    P_v: ArrayLike,
    progress_v: ArrayLike,
    *,
    n_points: int = 100,
) -> Tensor:
    """Distance between two trajectories at equal progress (eq. 2.2.5).

    The two-run case of :func:`trajectory_distances` (same quadrature): the mean of
    ``d_B(P_u(s), P_v(s))`` over the progress range both runs visited.

    Args:
        P_u: (T_u, N, C) probabilities of run u; progress_u: (T_u,).
        P_v: (T_v, N, C) probabilities of run v; progress_v: (T_v,).
        n_points: number of values of the fixed progress grid on [0, 1] (>= 2).

    Returns:
        0-dim distance (float64).

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
    lo = max(float(su.min()), float(sv.min()))
    hi = min(float(su.max()), float(sv.max()))
    if hi <= lo:
        raise ValueError(
            f"the trajectories share no progress range: u covers [{float(su.min()):.3g}, "
            f"{float(su.max()):.3g}], v covers [{float(sv.min()):.3g}, {float(sv.max()):.3g}]"
        )
    return trajectory_distances([Pu, Pv], [su, sv], n_points=n_points)[0, 1]


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
