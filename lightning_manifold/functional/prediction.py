"""Models as points of prediction space: log-probabilities, sqrt-probabilities, d_B to stored
points, points of the ignorance->truth geodesic, and when a trajectory reached a progress level.

These are the small pure helpers shared by the stateful modules (``embedding.py`` and
``online.py``); data flows from here up, never back.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from lightning_manifold.functional._checks import (
    check_labels,
    check_log_probabilities,
    check_row_sums,
)
from lightning_manifold.functional.distances import (
    bhattacharyya_from_sqrt,
    distance_to_truth_from_log_probs,
)
from lightning_manifold.functional.geodesic import ignorance_truth_geodesic
from lightning_manifold.functional.inpca import InPCAResult
from lightning_manifold.functional.progress import (
    PROGRESS_TOLERANCE,
    _plane_coordinates,
    _plane_rows,
    _rotation,
    _solve,
    _solve_on_host,
)

__all__ = [
    "ClassWeights",
    "PredictionGeometry",
    "as_log_probs",
    "class_weights",
    "distances_to_points",
    "geodesic_log_probs",
    "nonzero_components",
    "prediction_geometry",
    "sqrt_probs",
    "step_at_progress",
]


def _as_tensor(x: Any, name: str) -> Tensor:
    """``x`` as a tensor without a copy where possible (lists and scalars go through numpy)."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    try:
        return torch.as_tensor(np.asarray(x))
    except Exception as err:  # pragma: no cover - message only
        raise TypeError(f"`{name}` must be a tensor or an array, got {type(x).__name__}") from err


def _subsample_indices(total: int, keep: int) -> np.ndarray:
    """Evenly spaced indices (first and last included) of ``keep`` out of ``total`` items."""
    if keep >= total:
        return np.arange(total)
    return np.unique(np.round(np.linspace(0, total - 1, max(keep, 2))).astype(np.int64))


def as_log_probs(x: Any, name: str = "log_probs") -> Tensor:
    """Return log-probabilities from (..., N, C) log-probabilities *or* probabilities.

    The two are told apart by sign: any negative entry means log-probabilities, otherwise the
    input is read as probabilities (whose zeros become ``-inf``). Half precision is upcast to
    float32; float32/float64 are kept. No copy is made for float log-probabilities.

    Args:
        x: (N, C) or (q, N, C) log-probabilities or probabilities (tensor or array).
        name: the argument's name, for error messages.

    Raises:
        TypeError: ``x`` is not floating point.
        ValueError: ``x`` is neither 2-D nor 3-D.
    """
    t = _as_tensor(x, name)
    if not t.is_floating_point():
        raise TypeError(f"`{name}` must be floating point (log-)probabilities, got {t.dtype}")
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    if t.ndim not in (2, 3):
        raise ValueError(f"`{name}` must have shape (N, C) or (q, N, C), got {tuple(t.shape)}")
    if t.numel() and bool((t < 0).any()):
        return t
    return torch.log(t)


def sqrt_probs(log_probs: Tensor, dtype: torch.dtype) -> Tensor:
    """(..., N, C) log-probabilities -> sqrt-probabilities in ``dtype`` (for d_B, eq. 2.2.2).

    Entries are floored at the smallest normal number of ``dtype`` so that the Bhattacharyya
    coefficient of two stored models can never underflow to 0: a per-sample contribution to d_B
    then saturates at ``-log(tiny)`` (87 in float32) instead of becoming ``inf``. This only
    affects samples on which two models disagree with log-probability gaps beyond ~170.
    """
    return torch.exp(0.5 * log_probs.to(dtype)).clamp_min(torch.finfo(dtype).tiny)


def distances_to_points(
    log_probs: Tensor, sqrt_points: Tensor, labels: Tensor | None, dtype: torch.dtype
) -> Tensor:
    """d_B (eq. 2.2.2) of new models to stored points.

    Args:
        log_probs: (q, N, C) log-probabilities of the new models.
        sqrt_points: (p, N, C) floored sqrt-probabilities of the stored points (all but truth).
        labels: (N,) labels; when given, a last column with d_B to truth P* is appended
            (computed from log-probabilities: half the cross-entropy).
        dtype: dtype of ``sqrt_points``.

    Returns:
        (q, p) or (q, p + 1) float64 distances.
    """
    d = bhattacharyya_from_sqrt(sqrt_probs(log_probs, dtype), sqrt_points).to(torch.float64)
    if labels is None:
        return d
    d_truth = distance_to_truth_from_log_probs(log_probs, labels).to(torch.float64)
    return torch.cat([d, d_truth.reshape(-1, 1)], dim=1)


def geodesic_log_probs(labels: Tensor, num_classes: int, alphas: Tensor) -> Tensor:
    """(g, N, C) float64 log-probabilities of points along ignorance -> truth (eq. 2.2.3).

    Args:
        labels: (N,) int labels (truth P*).
        num_classes: C.
        alphas: (g,) positions along the geodesic (0: ignorance, 1: truth).

    Finite for alphas < 1 (every class keeps some probability before truth is reached).
    """
    n = labels.shape[0]
    if alphas.numel() == 0:
        return torch.zeros((0, n, num_classes), dtype=torch.float64, device=labels.device)
    probs = ignorance_truth_geodesic(labels, num_classes, alphas)
    return torch.log(probs.to(torch.float64)).reshape(alphas.numel(), n, num_classes)


def step_at_progress(steps: np.ndarray, progress: np.ndarray, s: float) -> float:
    """Step at which a trajectory first reached progress ``s`` (linear interpolation).

    Uses the running maximum of progress, so a later dip does not un-reach a level.

    Args:
        steps: (T,) steps of the snapshots.
        progress: (T,) progress (eq. 2.2.4) of the snapshots.
        s: progress level.

    Returns:
        The interpolated step, or NaN if the trajectory never reached ``s``.
    """
    if len(steps) == 0 or not math.isfinite(s):
        return math.nan
    reached = np.maximum.accumulate(np.asarray(progress, dtype=np.float64))
    if reached[-1] < s <= reached[-1] + PROGRESS_TOLERANCE:
        s = float(reached[-1])  # the same level, solved alone rather than in a batch
    idx = int(np.searchsorted(reached, s, side="left"))
    if idx >= len(reached):
        return math.nan
    if idx == 0:
        return float(steps[0])
    lo, hi = reached[idx - 1], reached[idx]
    frac = 0.0 if hi <= lo else (s - lo) / (hi - lo)
    return float(steps[idx - 1] + frac * (steps[idx] - steps[idx - 1]))


def nonzero_components(res: InPCAResult, tolerance: float = 0.0) -> InPCAResult:
    """Drop trailing axes whose eigenvalue is 0 (eq. 2.2.9 divides by sqrt|lambda|).

    Keeps at least one axis; eigenvalues are sorted by magnitude, so zeros are last. With
    ``tolerance`` > 0, axes with ``|lambda| <= tolerance * max |lambda|`` count as 0 too.
    """
    lam = res.eigenvalues.abs()
    keep = max(1, int((lam > tolerance * lam.max()).sum()))
    if keep == res.eigenvalues.shape[0]:
        return res
    return InPCAResult(
        coords=res.coords[:, :keep],
        eigenvalues=res.eigenvalues[:keep],
        eigenvectors=res.eigenvectors[:, :keep],
        row_means=res.row_means,
        grand_mean=res.grand_mean,
        total_stress=res.total_stress,
        weights=res.weights,
    )


class ClassWeights(NamedTuple):
    """The probe's samples grouped by class, for a batched per-class progress solve.

    Attributes:
        columns: (c, w) int64 sample indices of each present class, padded to the largest
            class size w (padding points at sample 0 with weight 0).
        weights: (c, w) float64, 1 for a real sample, 0 for padding.
        classes: (c,) int64, the classes of the rows (classes with at least one sample).
        num_classes: C.
        present: the same classes as a tuple of ints on the host (no transfer per capture).
    """

    columns: Tensor
    weights: Tensor
    classes: Tensor
    num_classes: int
    present: tuple[int, ...]


def class_weights(labels: Tensor, num_classes: int) -> ClassWeights:
    """Per-probe constant for :func:`prediction_geometry` (compute once, reuse every capture).

    Args:
        labels: (N,) int64 labels on the device of the log-probabilities.
        num_classes: C.
    """
    counts = torch.bincount(labels, minlength=num_classes)
    classes = (counts > 0).nonzero().reshape(-1)
    counts = counts[classes]
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(int(counts.max()), device=labels.device)
    real = pos[None, :] < counts[:, None]
    slot = torch.where(
        real, starts[:, None] + pos[None, :], torch.zeros_like(real, dtype=torch.int64)
    )
    present = tuple(classes.tolist())
    return ClassWeights(order[slot], real.to(torch.float64), classes, int(num_classes), present)


class PredictionGeometry(NamedTuple):
    """Where one model lies relative to ignorance, truth and the geodesic between them.

    Attributes (0-dim float64 unless noted):
        progress: projection onto the ignorance->truth geodesic (eq. 2.2.4).
        distance_to_geodesic: d_G to the geodesic point at ``progress`` (eq. 2.5.4).
        distance_to_ignorance: d_B(P, P0) (eq. 2.2.2).
        distance_to_truth: d_B(P, P*), half the cross-entropy.
        error: top-1 error on the probe.
        cross_entropy: mean negative log-likelihood on the probe.
        per_class_progress: (C,) progress on each class's samples (NaN for an absent class);
            empty (0,) when not asked for.
    """

    progress: Tensor
    distance_to_geodesic: Tensor
    distance_to_ignorance: Tensor
    distance_to_truth: Tensor
    error: Tensor
    cross_entropy: Tensor
    per_class_progress: Tensor


# One model of up to this many samples x classes on the CPU is computed with numpy: a numpy
# operation costs about a microsecond, a torch one several, and a capture is a few hundred.
_HOST_ELEMENTS = 1 << 18


def _prediction_geometry_on_host(
    L: np.ndarray, y: np.ndarray, classes: ClassWeights | None, theta: float
) -> PredictionGeometry:
    """:func:`prediction_geometry` of (N, C) log-probabilities and (N,) labels in numpy."""
    N, C = L.shape
    P = np.exp(L, dtype=np.float64)[None]
    x, yy, q, total = _plane_rows(P, y.reshape(1, N, 1), y)
    check_row_sums(total, "log_probs")  # NaN and +inf entries make the sums NaN
    q = np.maximum(q, np.finfo(np.float64).tiny)
    xy = np.stack([x, yy], 1)  # (1, 2, N)
    t = _solve_on_host(xy, q, None, theta, None)
    per_class = np.zeros(0)
    if classes is not None:
        cols = classes.columns.numpy()
        t_class = _solve_on_host(
            xy[0][:, cols].transpose(1, 0, 2), q[0][cols], classes.weights.numpy(), theta, None
        )
        per_class = np.full(C, math.nan)
        per_class[classes.classes.numpy()] = t_class / theta
    rc = x[0] * math.cos(t[0]) + yy[0] * math.sin(t[0])  # R cos(t - φ) per sample
    picked = np.take_along_axis(L, y[:, None], 1).astype(np.float64)
    cross_entropy = -picked.mean()
    values = (
        t[0] / theta,
        np.arccos(np.clip(rc, -1, 1)).mean(),  # eq. 2.5.4
        max(-np.log(x[0]).mean(), 0.0),  # x = BC with P0
        0.5 * cross_entropy,
        (L.argmax(-1) != y).mean(),
        cross_entropy,
    )
    scalars = torch.from_numpy(np.array(values, dtype=np.float64)).unbind()
    return PredictionGeometry(*scalars, per_class_progress=torch.from_numpy(per_class))


def prediction_geometry(
    log_probs: Tensor,
    labels: Tensor,
    *,
    classes: ClassWeights | None = None,
    check: bool = True,
) -> PredictionGeometry:
    """Progress, distances to P0, P* and the geodesic, error (and per-class progress) of a model.

    One pass over the (N, C) log-probabilities builds each sample's coordinates in the plane of
    ignorance and truth; the overall and the per-class progress (thesis fig. 3.2a) are then
    solved together as one batch of weighted problems, so asking for the per-class progress
    costs one batched solve rather than a second pass. d_B to ignorance reuses the plane's
    ``x = Σ_c sqrt(p_c / C)`` (its Bhattacharyya coefficient with P0). A float32/float64 model
    on the CPU is computed with numpy arrays (a capture's few hundred small operations cost
    several times less there), anything else with torch on its device; the results are tensors.

    Args:
        log_probs: (N, C) log-probabilities of one model (float32/float64, any device).
        labels: (N,) int64 labels on the same device.
        classes: :func:`class_weights` of the probe to also solve the per-class progress.
        check: validate shapes and labels (``False``: the caller produced them itself; the row
            sums are checked in any case, on values computed anyway).

    Returns:
        :class:`PredictionGeometry`.
    """
    if check:
        L, single = check_log_probabilities(log_probs, "log_probs", normalised=False)
        if not single:
            raise ValueError(f"`log_probs` must be one model (N, C), got {tuple(L.shape)}")
        y = check_labels(labels, L.shape[1], L.shape[2]).to(L.device)
    else:
        L, y = log_probs.unsqueeze(0), labels
    C = L.shape[2]
    theta = math.acos(1 / math.sqrt(C))
    on_host = L.device.type == "cpu" and L.dtype in (torch.float32, torch.float64)
    if on_host and L.shape[1] * C <= _HOST_ELEMENTS:
        return _prediction_geometry_on_host(L[0].detach().numpy(), y.numpy(), classes, theta)
    xy, q, sums = _plane_coordinates(L, y, True, "log_probs")
    if classes is None:
        t = _solve(xy, q, None, theta, sums)
        per_class = torch.zeros(0, dtype=torch.float64, device=L.device)
    else:
        t = _solve(xy, q, None, theta, sums)
        cols = classes.columns
        t_class = _solve(xy[0][:, cols].transpose(0, 1), q[0][cols], classes.weights, theta)
        per_class = torch.full((C,), math.nan, dtype=torch.float64, device=L.device)
        per_class[classes.classes] = t_class / theta
    rc = torch.bmm(_rotation(t, math.pi / 2), xy).squeeze(1)  # R cos(t - φ) per sample
    distance_to_geodesic = rc.clamp_(-1, 1).arccos_().mean()  # eq. 2.5.4
    distance_to_ignorance = (-xy[0, 0].log().mean()).clamp_min(0)  # x = BC with P0
    picked = L[0].gather(-1, y[:, None]).to(torch.float64)
    cross_entropy = -picked.mean()
    error = (L[0].argmax(-1) != y).to(torch.float64).mean()
    return PredictionGeometry(
        progress=t[0] / theta,
        distance_to_geodesic=distance_to_geodesic,
        distance_to_ignorance=distance_to_ignorance,
        distance_to_truth=0.5 * cross_entropy,
        error=error,
        cross_entropy=cross_entropy,
        per_class_progress=per_class,
    )
