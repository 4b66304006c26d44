"""Groups of trajectories: mean trajectory, tube radius, normalised distance, Riemann length.

Thesis §3.5.6 and Remark 3.3.3: the runs of one configuration (seeds) are re-indexed by progress
(:func:`~lightning_manifold.functional.trajectory.reindex_by_progress`), their *mean trajectory*
is the arithmetic mean of their probabilities at equal progress, the *tube radius* the largest
Bhattacharyya distance of a run to that mean, and two configurations are told apart by the
distance between their mean trajectories divided by the average of their radii (< 1: the tubes
intersect). The *Riemann length* measures how long a path through prediction space is
(thesis Result 4: episodic 2-way meta-learning about 40x longer than supervised learning).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_manifold.functional._checks import (
    ArrayLike,
    as_tensor,
    check_log_probabilities,
    check_probabilities,
)
from lightning_manifold.functional.distances import bhattacharyya_coefficients
from lightning_manifold.functional.trajectory import reindex_by_progress, tube_width

__all__ = [
    "mean_trajectory",
    "normalized_tube_distance",
    "reindex_runs",
    "riemann_length",
    "riemann_length_from_log_probs",
    "tube_radius",
]


def _check_runs(P_runs: ArrayLike, name: str) -> Tensor:
    X = as_tensor(P_runs, name)
    if X.ndim != 4 or X.numel() == 0:
        raise ValueError(
            f"`{name}` must be a non-empty (R, S, N, C) array of R runs re-indexed on S "
            f"progress values, got shape {tuple(X.shape)}"
        )
    return X


def reindex_runs(
    trajectories: Sequence[ArrayLike], progresses: Sequence[ArrayLike], grid: ArrayLike
) -> tuple[Tensor, Tensor]:
    """Re-index several runs on one progress grid (eq. 2.2.3 between snapshots).

    Args:
        trajectories: R arrays of (T_r, N, C) probabilities (same N, C; any T_r).
        progresses: R arrays of (T_r,) progress values (eq. 2.2.4).
        grid: (S,) progress values.

    Returns:
        ``(P_runs, valid)``: (R, S, N, C) probabilities (NaN where a run did not reach a
        progress value) and (R, S) bool.
    """
    if len(trajectories) == 0 or len(trajectories) != len(progresses):
        raise ValueError(
            "`trajectories` and `progresses` must be non-empty sequences of equal length, got "
            f"{len(trajectories)} and {len(progresses)}"
        )
    out = [reindex_by_progress(P, s, grid) for P, s in zip(trajectories, progresses)]
    shapes = {tuple(p.shape[1:]) for p, _ in out}
    if len(shapes) != 1:
        raise ValueError(f"`trajectories` must share (N, C), got {sorted(shapes)}")
    device = out[0][0].device
    dtype = torch.float64 if any(p.dtype == torch.float64 for p, _ in out) else torch.float32
    return (
        torch.stack([p.to(device=device, dtype=dtype) for p, _ in out]),
        torch.stack([v.to(device) for _, v in out]),
    )


def mean_trajectory(P_runs: ArrayLike) -> Tensor:
    """Mean trajectory of several runs: arithmetic mean of probabilities at equal progress.

    Thesis §3.5.6 (``P_μ(t) = (1/K) Σ_k P_{w_k}(t)``, like an ensemble; the Bhattacharyya
    centroid has no closed form).

    Args:
        P_runs: (R, S, N, C) probabilities of R runs re-indexed on the same S progress values
            (:func:`reindex_runs`). NaN (progress not reached) propagates.

    Returns:
        (S, N, C) probabilities.
    """
    return _check_runs(P_runs, "P_runs").mean(0)


def tube_radius(P_runs: ArrayLike) -> Tensor:
    """Radius of the tube of runs around their mean trajectory (thesis §3.5.6).

    ``r(s) = max_k d_B(τ_k(s), τ_μ(s))`` with τ_μ the :func:`mean_trajectory`.

    Args:
        P_runs: (R, S, N, C) probabilities (see :func:`mean_trajectory`).

    Returns:
        (S,) radii; NaN where a run did not reach that progress.
    """
    return tube_width(_check_runs(P_runs, "P_runs")).amax(0)


def normalized_tube_distance(P_runs_1: ArrayLike, P_runs_2: ArrayLike) -> Tensor:
    """Distance between two mean trajectories over the average tube radius (Remark 3.3.3).

    ``2 d_B(τ¹_μ(s), τ²_μ(s)) / (r¹(s) + r²(s))`` at each progress value; below 1 the two
    tubes intersect (the configurations are not distinguishable there).

    Args:
        P_runs_1: (R1, S, N, C) probabilities of the runs of configuration 1, R1 >= 2.
        P_runs_2: (R2, S, N, C) of configuration 2, on the same S progress values, R2 >= 2.

    Returns:
        (S,) ratios (NaN where a run did not reach that progress; inf where both radii are 0
        and the means differ).
    """
    X1, X2 = _check_runs(P_runs_1, "P_runs_1"), _check_runs(P_runs_2, "P_runs_2")
    for name, X in (("P_runs_1", X1), ("P_runs_2", X2)):
        if X.shape[0] < 2:
            raise ValueError(
                f"`{name}` must hold at least 2 runs (a tube needs seeds), got {X.shape[0]}"
            )
    if X1.shape[1:] != X2.shape[1:]:
        raise ValueError(
            f"`P_runs_2` must have the same (S, N, C) = {tuple(X1.shape[1:])} as `P_runs_1`, "
            f"got {tuple(X2.shape[1:])}"
        )
    dtype = torch.float64 if torch.float64 in (X1.dtype, X2.dtype) else torch.float32
    X1, X2 = X1.to(dtype), X2.to(device=X1.device, dtype=dtype)
    d = -bhattacharyya_coefficients(X1.mean(0), X2.mean(0)).log().mean(-1)  # (S,)
    return 2 * d / (tube_radius(X1) + tube_radius(X2))


def _length_from_sqrt(S: Tensor) -> Tensor:
    # Per sample, the great-circle angle between consecutive sqrt-probability vectors, from the
    # chord: arccos of a coefficient near 1 loses half the digits, 2 arcsin(|Δ|/2) does not.
    chord = torch.linalg.vector_norm(S[1:] - S[:-1], dim=-1)  # (T-1, N)
    return (2 * torch.asin((chord / 2).clamp(max=1.0))).mean(-1).sum()


def riemann_length(P: ArrayLike) -> Tensor:
    """Riemann length of a trajectory: the sum of the geodesic lengths of its steps.

    ``L = Σ_t d_G(P_t, P_{t+1})`` with ``d_G`` the geodesic distance of eq. 2.5.4 (per-sample
    great-circle angle between sqrt-probabilities, averaged over samples). This is the exact
    length of the piecewise-geodesic path through the snapshots used to re-index by progress
    (eq. 2.2.3), and it grows to the length of the training path as captures get denser.
    Bhattacharyya steps do not add up to a length (d_B is quadratic in small steps).

    Args:
        P: (T, N, C) probabilities of the snapshots in training order (T >= 1).

    Returns:
        0-dim length (0 for T = 1), in radians per sample.
    """
    P3, single = check_probabilities(P, "P")
    if single:
        raise ValueError("`P` must be a (T, N, C) trajectory, got one (N, C) model")
    return _length_from_sqrt(P3.sqrt())


def riemann_length_from_log_probs(log_P: ArrayLike) -> Tensor:
    """:func:`riemann_length` of a (T, N, C) trajectory given as log-probabilities."""
    L, single = check_log_probabilities(log_P, "log_P")
    if single:
        raise ValueError("`log_P` must be a (T, N, C) trajectory, got one (N, C) model")
    return _length_from_sqrt((0.5 * L).exp())
