"""Many classes: a random column-stochastic projection of the classes (thesis §3.5.2).

Each sample's probability vector over C classes is multiplied by a (C, k) non-negative matrix
whose rows sum to 1, i.e. the model is read as predicting k random mixtures of classes. d_B is
then computed on (N, k) instead of (N, C) probabilities. A Markov kernel can only bring models
closer (data processing), so projected distances are never larger; how much they shrink and how
well their order is kept is measured on a sample of pairs by :func:`class_projection_effect`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from lightning_manifold.scale.sources import ModelSource

__all__ = ["ClassProjectionEffect", "class_projection_effect", "class_projection_matrix"]


def class_projection_matrix(
    num_classes: int, projection: int | Tensor | np.ndarray, *, seed: int = 0
) -> Tensor:
    """The (C, k) class projection to use.

    Args:
        num_classes: C.
        projection: k, the number of projected classes (a random matrix is drawn with
            :func:`lightning_manifold.functional.random_column_stochastic` from a generator
            seeded with ``seed``), or an explicit (C, k) matrix (used as given).
        seed: seed of the random matrix.

    Returns:
        (C, k) float64 matrix.

    Raises:
        ValueError: if k is not a positive integer.
    """
    if isinstance(projection, bool) or not isinstance(projection, int | np.integer):
        return torch.as_tensor(projection).detach().to(dtype=torch.float64)
    k = int(projection)
    if k < 1:
        raise ValueError(f"`class_projection` must be a positive number of classes, got {k}")
    from lightning_manifold import functional as F

    generator = torch.Generator().manual_seed(int(seed))
    return F.random_column_stochastic(num_classes, k, generator=generator, dtype=torch.float64)


@dataclass(frozen=True)
class ClassProjectionEffect:
    """How a class projection changes Bhattacharyya distances, on a sample of model pairs.

    Attributes:
        num_classes: C before projection.
        projected_classes: k after projection.
        num_models: models sampled.
        num_pairs: pairs compared (all pairs among the sampled models with d_B > 0).
        relative_change_median: median of |d' - d| / d over pairs (d exact, d' projected).
        relative_change_mean: mean of |d' - d| / d.
        relative_change_max: maximum of |d' - d| / d.
        ratio_mean: mean of d' / d (<= 1: projection shrinks distances).
        correlation: Pearson correlation between d and d' (NaN if fewer than 3 pairs).
        rank_correlation: Spearman rank correlation between d and d' (NaN likewise).
    """

    num_classes: int
    projected_classes: int
    num_models: int
    num_pairs: int
    relative_change_median: float
    relative_change_mean: float
    relative_change_max: float
    ratio_mean: float
    correlation: float
    rank_correlation: float

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-able)."""
        return asdict(self)

    def summary(self) -> str:
        """One line for logs."""
        return (
            f"class projection {self.num_classes}->{self.projected_classes} classes on "
            f"{self.num_pairs} pairs: relative change of d_B median "
            f"{self.relative_change_median:.3g}"
            f" (max {self.relative_change_max:.3g}), d'/d mean {self.ratio_mean:.3g}, "
            f"correlation {self.correlation:.4f}, rank correlation {self.rank_correlation:.4f}"
        )


def class_projection_effect(
    source: ModelSource,
    projection: int | Tensor | np.ndarray,
    *,
    num_pairs: int = 2000,
    seed: int = 0,
    memory_budget: int = 2**30,
    device: torch.device | str | None = None,
) -> ClassProjectionEffect:
    """Measure the effect of a class projection on d_B (eq. 2.2.2) on a sample of pairs.

    ``s`` models are drawn at random (s(s-1)/2 >= ``num_pairs``, capped so that both
    versions of the sample fit ``memory_budget``); d_B is computed among them before and after
    the projection.

    Args:
        source: the models (unprojected).
        projection: k or a (C, k) matrix, see :func:`class_projection_matrix`.
        num_pairs: pairs to compare (at least 1).
        seed: seed of the model sample and of a random projection matrix.
        memory_budget: bytes available for the sampled models.
        device: where to compute.

    Returns:
        A :class:`ClassProjectionEffect`.
    """
    from lightning_manifold import functional as F

    if num_pairs < 1:
        raise ValueError(f"`num_pairs` must be >= 1, got {num_pairs}")
    M = class_projection_matrix(source.num_classes, projection, seed=seed)
    projected = source.with_class_projection(M)
    m = source.num_models
    s = math.ceil((1 + math.sqrt(1 + 8 * num_pairs)) / 2)
    per_model = 2 * source.bytes_per_model + projected.bytes_per_model
    s = max(2, min(m, s, memory_budget // max(1, per_model)))
    rng = np.random.default_rng(seed)
    models = np.sort(rng.choice(m, size=s, replace=False)) if s < m else np.arange(m)
    d = F.bhattacharyya_from_sqrt(source.sqrt_probs(models, device=device))
    dp = F.bhattacharyya_from_sqrt(projected.sqrt_probs(models, device=device))
    iu = np.triu_indices(len(models), 1)
    d = d.detach().to("cpu").numpy()[iu]
    dp = dp.detach().to("cpu").numpy()[iu]
    keep = d > 0
    d, dp = d[keep], dp[keep]
    if d.size == 0:
        nan = float("nan")
        return ClassProjectionEffect(
            source.num_classes, int(M.shape[1]), len(models), 0, nan, nan, nan, nan, nan, nan
        )
    rel = np.abs(dp - d) / d
    if d.size >= 3 and np.ptp(d) > 0 and np.ptp(dp) > 0:
        corr = float(np.corrcoef(d, dp)[0, 1])
        rank = float(stats.spearmanr(d, dp).statistic)
    else:
        corr = rank = float("nan")
    return ClassProjectionEffect(
        num_classes=source.num_classes,
        projected_classes=int(M.shape[1]),
        num_models=len(models),
        num_pairs=int(d.size),
        relative_change_median=float(np.median(rel)),
        relative_change_mean=float(rel.mean()),
        relative_change_max=float(rel.max()),
        ratio_mean=float((dp / d).mean()),
        correlation=corr,
        rank_correlation=rank,
    )
