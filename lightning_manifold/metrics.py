"""torchmetrics ``Metric`` classes for manifold quantities that reduce over probe samples.

A probe evaluated in shards (batches, or slices on several ranks under DDP) gives the same
value as the functional core on the whole probe: each class only declares its state and
``dist_reduce_fx`` so torchmetrics synchronises it; the arithmetic is the geometry core's.

=========================  =============================================  ===================
metric                     state (reduction)                              functional twin
=========================  =============================================  ===================
BhattacharyyaToReference   (m,) Σ_n log BC_n to each reference (sum)      F.bhattacharyya*
DistanceToIgnorance        Σ_n d_B,n to P0 and sample count (sum)         F.distance_to_ignorance*
DistanceToTruth            Σ_n d_B,n to P* and sample count (sum)         F.distance_to_truth*
ProgressStatistics         per-sample log-probabilities, labels (cat)     F.geodesic_projection*
=========================  =============================================  ===================

d_B (eq. 2.2.2) is a mean over samples of per-sample terms, so sums and counts reduce it
exactly. Progress (eq. 2.2.4) is an argmin of a mean over samples, not a mean of per-sample
values, so its metric concatenates the samples and solves on :meth:`compute`.

Example::

    metric = BhattacharyyaToReference(reference)          # ReferenceEmbedding
    for x, y, idx in shard_loader:                         # idx: positions in the probe
        metric.update(model(x).log_softmax(-1), idx)
    d = metric.compute()                                   # (m,) d_B to every embedded point
    coords = reference.project_distances(d)                # eq. 2.2.9
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_manifold import functional as F
from lightning_manifold.embedding import (
    ReferenceEmbedding,
    _as_tensor,
    as_log_probs,
    distances_to_points,
    sqrt_probs,
)

__all__ = [
    "BhattacharyyaToReference",
    "DistanceToIgnorance",
    "DistanceToTruth",
    "ProgressStatistics",
]


def _shard(log_probs: Any, name: str = "log_probs") -> Tensor:
    lp = as_log_probs(log_probs, name)
    if lp.ndim != 2:
        raise ValueError(f"`{name}` must be one model's (n, C) shard, got {tuple(lp.shape)}")
    return lp


def _labels(labels: Any, n: int) -> Tensor:
    y = _as_tensor(labels, "labels")
    if y.ndim != 1 or y.shape[0] != n or y.is_floating_point():
        raise ValueError(
            f"`labels` must be (n,) = ({n},) integers, got {tuple(y.shape)} of {y.dtype}"
        )
    return y.long()


class _SampleMean(Metric):
    """Mean over probe samples of a per-sample quantity: state = sum and count."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def _add(self, mean: Tensor, n: int) -> None:
        self.total += mean.to(self.total) * n
        self.count += n

    def compute(self) -> Tensor:
        """0-dim float64 mean over every sample seen (NaN before any update)."""
        return self.total / self.count


class DistanceToIgnorance(_SampleMean):
    """d_B(P, P0) (eq. 2.2.2) of one model, accumulated over shards of the probe.

    ``update(log_probs)`` with (n, C) log-probabilities (or probabilities) of a shard.
    """

    def update(self, log_probs: Tensor) -> None:
        """Add an (n, C) shard."""
        lp = _shard(log_probs)
        self._add(F.distance_to_ignorance_from_log_probs(lp), lp.shape[0])


class DistanceToTruth(_SampleMean):
    """d_B(P, P*) = half the cross-entropy, accumulated over shards (from log-probabilities).

    ``update(log_probs, labels)`` with an (n, C) shard and its (n,) labels.
    """

    def update(self, log_probs: Tensor, labels: Tensor) -> None:
        """Add an (n, C) shard with its (n,) labels."""
        lp = _shard(log_probs)
        self._add(F.distance_to_truth_from_log_probs(lp, _labels(labels, lp.shape[0])), lp.shape[0])


class BhattacharyyaToReference(Metric):
    """d_B (eq. 2.2.2) of one model to m reference models, accumulated over probe shards.

    Args:
        reference: a :class:`ReferenceEmbedding` (distances to each of its m embedded points,
            truth included, in the order :meth:`ReferenceEmbedding.project_distances` expects),
            or (m, N, C) log-probabilities / probabilities of reference models.
        kwargs: passed to :class:`torchmetrics.Metric`.

    ``update(log_probs, index)``: (n, C) log-probabilities of the model on the probe samples
    at positions ``index`` (n,) (default: the whole probe in order). ``compute()`` returns
    (m,) float64 distances. State: (m,) sums of per-sample log Bhattacharyya coefficients and
    a sample count, both reduced by ``sum``.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, reference: ReferenceEmbedding | Tensor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(reference, ReferenceEmbedding):
            sqrt = reference.sqrt_probs
            labels = reference.labels if reference.has_landmarks else None
            m = reference.num_points
        else:
            lp = as_log_probs(reference, "reference")
            if lp.ndim != 3:
                raise ValueError(
                    f"`reference` must be (m, N, C) reference models, got {tuple(lp.shape)}"
                )
            sqrt = sqrt_probs(lp, lp.dtype)
            labels = None
            m = lp.shape[0]
        self.register_buffer("reference_sqrt", sqrt, persistent=False)
        self.register_buffer(
            "reference_labels",
            torch.zeros(0, dtype=torch.int64) if labels is None else labels,
            persistent=False,
        )
        self._with_truth = labels is not None
        self.add_state("log_bc_sum", torch.zeros(m, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, log_probs: Tensor, index: Tensor | None = None) -> None:
        """Add an (n, C) shard at probe positions ``index`` (n,)."""
        lp = _shard(log_probs).to(self.reference_sqrt.device)
        N = self.reference_sqrt.shape[1]
        if index is None:
            if lp.shape[0] != N:
                raise ValueError(
                    f"`index` is required for a shard of {lp.shape[0]} samples "
                    f"(the probe has N={N})"
                )
            idx = torch.arange(N, device=lp.device)
        else:
            idx = _labels(index, lp.shape[0]).to(lp.device)
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= N):
                raise ValueError(
                    f"`index` must lie in [0, {N}), got [{int(idx.min())}, {int(idx.max())}]"
                )
        labels = self.reference_labels[idx] if self._with_truth else None
        d = distances_to_points(
            lp.unsqueeze(0), self.reference_sqrt[:, idx], labels, self.reference_sqrt.dtype
        )[0]
        self.log_bc_sum -= d * lp.shape[0]  # d is a mean of -log BC over the shard
        self.count += lp.shape[0]

    def compute(self) -> Tensor:
        """(m,) float64 d_B to each reference point over every sample seen."""
        return -self.log_bc_sum / self.count


class ProgressStatistics(Metric):
    """Progress (eq. 2.2.4), distance to the geodesic and per-class progress over probe shards.

    Progress is the argmin of a mean over samples, so the state keeps every sample: the
    (n, C) log-probabilities and (n,) labels of each shard, reduced by ``cat``; :meth:`compute`
    solves on the whole probe with the functional core.

    Args:
        per_class: also return per-class progress (thesis fig. 3.2a).
        kwargs: passed to :class:`torchmetrics.Metric`.

    ``compute()`` returns ``{"progress": 0-dim, "distance_to_geodesic": 0-dim}`` plus
    ``"per_class_progress": (C,)`` (NaN for an absent class) when ``per_class``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, per_class: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.per_class = per_class
        self.add_state("log_probs", [], dist_reduce_fx="cat")
        self.add_state("labels", [], dist_reduce_fx="cat")

    def update(self, log_probs: Tensor, labels: Tensor) -> None:
        """Add an (n, C) shard with its (n,) labels."""
        lp = _shard(log_probs)
        self.log_probs.append(lp)
        self.labels.append(_labels(labels, lp.shape[0]).to(lp.device))

    def compute(self) -> dict[str, Tensor]:
        """Progress and distance to the geodesic of the model on every sample seen."""
        lp = dim_zero_cat(self.log_probs)
        y = dim_zero_cat(self.labels)
        res = F.geodesic_projection_from_log_probs(lp, y)
        out = {"progress": res.progress, "distance_to_geodesic": res.distance}
        if self.per_class:
            out["per_class_progress"] = F.per_class_progress_from_log_probs(lp, y)
        return out
