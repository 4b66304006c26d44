"""Placing the *same* models, measured another way, into an InPCA (thesis eq. 2.3.1, §2.5.3.3).

Eq. 2.2.9 places a new model from its distances to the reference models. Eq. 2.3.1 places a
second measurement of the reference models themselves (their predictions on the test probe,
or on all samples when the InPCA was built from a subset of them): model w of the second
distance matrix D' is model w of the embedding, so the centring term that eq. 2.2.9 takes from
the new row (``mean_u' d_wu'``) is taken from the reference row of the same model (``r_w``):

    ``W'_wu = -½ D'_wu + ½ (r_w + r_u - g)``,  ``X'_w = Σ_u W'_wu U_u / (sign(λ) sqrt|λ|)``

with r the reference row means and g their mean. The thesis states the conditions: the two
sets hold the same models in the same order, and the reference centring term stands in for
that of D' (self-averaging). For plain (unweighted) InPCA the two placements agree: a term
constant along u drops out because every eigenvector of a non-zero eigenvalue sums to 0, which
is why §2.5.3.3 can name eq. 2.2.9 for the same procedure.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_manifold.functional._checks import ArrayLike, as_tensor, check_count
from lightning_manifold.functional.inpca import project_from_stats

__all__ = ["project_paired", "sample_subset"]


def project_paired(
    D_paired: ArrayLike,
    row_means: ArrayLike,
    grand_mean: ArrayLike | float,
    eigenvalues: ArrayLike,
    eigenvectors: ArrayLike,
    *,
    weights: ArrayLike | None = None,
) -> Tensor:
    """Coordinates of the reference models from a second distance matrix among them (eq. 2.3.1).

    Row w of ``D_paired`` must be the same model (the same weights) as row w of the embedding.
    Eq. 2.3.1 differs from eq. 2.2.9 only in the centring term of that row, so each row is
    shifted to have the reference row mean r_w and placed by
    :func:`~lightning_manifold.functional.inpca.project_from_stats` (eq. 2.2.9). Giving the
    reference distance matrix itself returns the embedding's own coordinates.

    Args:
        D_paired: (m, m) distances among the same m models measured another way (e.g. d_B on
            the test probe, or on all samples).
        row_means: (m,) ``InPCAResult.row_means`` of the reference embedding.
        grand_mean: ``InPCAResult.grand_mean``.
        eigenvalues: (k,) ``InPCAResult.eigenvalues`` (non-zero; signs kept).
        eigenvectors: (m, k) ``InPCAResult.eigenvectors``.
        weights: ``InPCAResult.weights`` (None for plain InPCA).

    Returns:
        (m, k) coordinates X'.

    Raises:
        ValueError: ``D_paired`` is not (m, m) for the m models of the embedding, or not finite.
    """
    Dp = as_tensor(D_paired, "D_paired")
    U = as_tensor(eigenvectors, "eigenvectors")
    m = U.shape[0] if U.ndim == 2 else -1
    if Dp.shape != (m, m):
        raise ValueError(
            f"`D_paired` must be (m, m) with m = {m}, the models of the embedding in the same "
            f"order (eq. 2.3.1 needs as many models as the reference), got {tuple(Dp.shape)}"
        )
    if not bool(torch.isfinite(Dp).all()):
        raise ValueError("`D_paired` must be finite, got NaN or inf entries")
    Dp = Dp.to(device=U.device, dtype=U.dtype)
    r = as_tensor(row_means, "row_means").to(device=U.device, dtype=U.dtype)
    if r.shape != (m,):
        raise ValueError(f"`row_means` must have shape ({m},), got {tuple(r.shape)}")
    if weights is None:
        own = Dp.mean(1)
    else:  # the weighted row mean that eq. 2.2.9 subtracts (project_from_stats normalises μ)
        mu = as_tensor(weights, "weights", floating=False).to(device=U.device, dtype=U.dtype)
        if mu.shape != (m,) or not float(mu.sum()) > 0:
            raise ValueError(f"`weights` must have shape ({m},) and a positive sum")
        own = Dp @ (mu / mu.sum())
    shifted = Dp - own[:, None] + r[:, None]  # eq. 2.2.9's own-row mean becomes r_w
    return project_from_stats(shifted, r, grand_mean, eigenvalues, U, weights=weights)


def sample_subset(
    num_samples: int, n: int, *, seed: int = 0, device: torch.device | str | None = None
) -> Tensor:
    """A seeded random subset of n of the N probe samples, sorted (thesis §2.5.3.3).

    The draws are nested: for one seed, the subset of size n is the first n of one random
    permutation of the N samples, so a larger subset contains every smaller one.

    Args:
        num_samples: N.
        n: subset size, 1 <= n <= N.
        seed: seed of the permutation (a private generator: the global RNG is not touched).
        device: where the indices live.

    Returns:
        (n,) int64 sorted sample indices.

    Raises:
        ValueError: n is not an integer in [1, N].
    """
    N = check_count(num_samples, "num_samples", 1)
    k = check_count(n, "n", 1)
    if k > N:
        raise ValueError(f"`n` must be at most the number of probe samples N = {N}, got {k}")
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(N, generator=g)[:k].sort().values.to(device)
