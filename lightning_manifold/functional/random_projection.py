"""Fewer effective classes for very large C (thesis §3.5.2).

Each sample's C probabilities are mapped through a random stochastic matrix to k < C "classes"
before distances are computed: the model is treated as predicting random mixtures of classes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lightning_manifold.functional._checks import (
    ArrayLike,
    as_tensor,
    check_count,
    check_device,
    check_float_dtype,
    check_probabilities,
)

__all__ = ["project_classes", "random_column_stochastic"]


def random_column_stochastic(
    num_classes: int,
    k: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """A random (C, k) matrix M whose rows are probability vectors (Dirichlet(1) draws).

    In the thesis' orientation (a k x C matrix acting on column vectors, ``M.T``) its columns
    sum to 1, so ``p @ M`` is again a probability vector over k outputs.

    Args:
        num_classes: C.
        k: number of outputs, 2 <= k <= C.
        generator: optional torch.Generator for reproducibility (global RNG untouched if given).

    Returns:
        (C, k) non-negative matrix with rows summing to 1.
    """
    num_classes = check_count(num_classes, "num_classes", 2)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 2 <= k <= num_classes:
        raise ValueError(f"`k` must be an integer in [2, num_classes={num_classes}], got {k!r}")
    dtype, device = check_float_dtype(dtype), check_device(device)
    u = torch.rand((num_classes, k), generator=generator, dtype=torch.float64)
    e = -torch.log1p(-u)  # exponential draws; normalised rows are Dirichlet(1)
    M = e / e.sum(1, keepdim=True)
    return M.to(device=device, dtype=dtype)


def project_classes(P: ArrayLike, M: ArrayLike) -> Tensor:
    """Map probabilities over C classes to k outputs: ``p @ M`` sample by sample.

    Args:
        P: (m, N, C) or (N, C) probabilities.
        M: (C, k) row-stochastic matrix from :func:`random_column_stochastic`.

    Returns:
        (m, N, k) or (N, k) probabilities.
    """
    P3, single = check_probabilities(P, "P")
    Mt = as_tensor(M, "M").to(device=P3.device, dtype=P3.dtype)
    if Mt.ndim != 2 or Mt.shape[0] != P3.shape[-1]:
        raise ValueError(
            f"`M` must have shape (C, k) with C = {P3.shape[-1]}, got {tuple(Mt.shape)}"
        )
    if float(Mt.min()) < 0 or float((Mt.sum(1) - 1).abs().max()) > 1e-6:
        raise ValueError("`M` must be non-negative with rows summing to 1")
    out = P3 @ Mt
    return out[0] if single else out
