"""Intensive PCA: isometric embedding of models in Minkowski space (thesis eqs. 2.2.6-2.2.9).

InPCA is classical multidimensional scaling of the Bhattacharyya distance matrix D with the
negative eigenvalues kept: they are *time-like* axes that subtract from squared distances.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lightning_manifold.functional._checks import ArrayLike, as_tensor

__all__ = [
    "InPCAResult",
    "explained_pairwise_distance",
    "explained_stress",
    "inpca",
    "minkowski_sq_distance",
    "project",
    "project_from_stats",
    "time_like",
]

# Below this many models, or when most eigenpairs are wanted, a dense eigh is fastest.
_DENSE_LIMIT = 500
# Negative distances down to this many ulps of the largest one are taken as round-off.
_NEGATIVE_ROUNDING = 64


@dataclass
class InPCAResult:
    """An InPCA embedding of m models in k dimensions.

    Attributes:
        coords: (m, k) coordinates ``U sqrt(|Λ|)``.
        eigenvalues: (k,) eigenvalues of the centred matrix, sorted by |λ| descending, signs
            kept (negative = time-like).
        eigenvectors: (m, k) eigenvectors with a deterministic sign (largest-|entry| positive).
        row_means: (m,) (weighted) row means of D, needed to project new models (eq. 2.2.9).
        grand_mean: 0-dim (weighted) mean of D.
        total_stress: 0-dim sum of all squared eigenvalues (``||W||_F²`` for unit weights),
            the denominator of the explained stress (eq. 2.2.8).
        weights: (m,) model weights normalised to mean 1, or None for unweighted InPCA.
    """

    coords: Tensor
    eigenvalues: Tensor
    eigenvectors: Tensor
    row_means: Tensor
    grand_mean: Tensor
    total_stress: Tensor
    weights: Tensor | None = None

    @property
    def time_like(self) -> Tensor:
        """(k,) bool: axes with negative eigenvalues."""
        return self.eigenvalues < 0

    @property
    def signs(self) -> Tensor:
        """(k,) +1 for space-like and -1 for time-like axes (the Minkowski signature)."""
        return torch.where(self.eigenvalues < 0, -1.0, 1.0).to(self.coords.dtype)


def time_like(eigenvalues: ArrayLike) -> Tensor:
    """(k,) bool mask of time-like axes (negative eigenvalues, eq. 2.2.6)."""
    return as_tensor(eigenvalues, "eigenvalues") < 0


def _as_int(value: object, name: str, expected: str) -> int:
    """An integer (numpy integers too); floats and bools are refused."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            pass
    raise ValueError(f"`{name}` must be {expected}, got {value!r}")


def _check_distance_matrix(D: ArrayLike, name: str = "D") -> Tensor:
    t = as_tensor(D, name)
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise ValueError(f"`{name}` must be a square (m, m) matrix, got shape {tuple(t.shape)}")
    if t.shape[0] < 2:
        raise ValueError(f"`{name}` must hold at least 2 models, got {t.shape[0]}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"`{name}` must be finite, got NaN or inf entries")
    scale = float(t.abs().max()) or 1.0
    asym = float((t - t.T).abs().max())
    if asym > 1e-6 * scale:
        raise ValueError(f"`{name}` must be symmetric, got max |D - D.T| = {asym:.3g}")
    low = float(t.min())
    if low < -_NEGATIVE_ROUNDING * torch.finfo(t.dtype).eps * scale:  # round-off is allowed
        raise ValueError(f"`{name}` must hold non-negative distances, got minimum {low:.3g}")
    return t


def _check_weights(weights: ArrayLike | None, m: int, like: Tensor) -> Tensor | None:
    if weights is None:
        return None
    w = as_tensor(weights, "weights", floating=False).to(device=like.device, dtype=like.dtype)
    if w.shape != (m,):
        raise ValueError(f"`weights` must have shape (m,) = ({m},), got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or float(w.min()) < 0 or float(w.sum()) <= 0:
        raise ValueError("`weights` must be finite, non-negative and not all zero")
    return w * (m / w.sum())  # mean 1: uniform weights reproduce plain InPCA


def _centring(D: Tensor, w: Tensor | None) -> tuple[Tensor, Tensor]:
    """(Weighted) row means (m,) and grand mean of D."""
    if w is None:
        r = D.mean(1)
        return r, r.mean()
    mu = w / w.sum()
    r = D @ mu
    return r, mu @ r


def _deterministic_signs(U: Tensor, rows: Tensor | None = None) -> Tensor:
    """Flip each column so its largest-|entry| is positive (like sklearn's svd_flip).

    ``rows``: optional bool mask of the rows that decide (the models that define the axes).
    """
    ref = U if rows is None else U[rows]
    idx = ref.abs().argmax(0)
    s = torch.sign(ref[idx, torch.arange(U.shape[1], device=U.device)])
    s = torch.where(s == 0, torch.ones_like(s), s)
    return U * s


def _top_eigenpairs(M: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k eigenpairs of symmetric M with the largest |λ|, sorted by |λ| descending."""
    m = M.shape[0]
    if m <= _DENSE_LIMIT or k > m // 32:  # Lanczos' cost grows with k: full eigh beyond
        lam, V = torch.linalg.eigh(M)
    else:
        # Partial Lanczos on the host; vectors move, the matrix stays where it is.
        from scipy.sparse.linalg import LinearOperator, eigsh

        def matvec(v: np.ndarray) -> np.ndarray:
            x = torch.as_tensor(np.asarray(v).reshape(m, -1), dtype=M.dtype, device=M.device)
            return (M @ x).numpy(force=True)

        op = LinearOperator((m, m), matvec=matvec, matmat=matvec, dtype=np.float64)
        rng = np.random.default_rng(0)  # fixed start vector: the same answer on every call
        lam_np, V_np = eigsh(op, k=k, which="LM", v0=rng.standard_normal(m))
        lam = torch.as_tensor(lam_np, dtype=M.dtype, device=M.device)
        V = torch.as_tensor(V_np, dtype=M.dtype, device=M.device)
    order = torch.argsort(lam.abs(), descending=True)[:k]
    return lam[order], V[:, order]


def inpca(
    D: ArrayLike, n_components: int | None = None, *, weights: ArrayLike | None = None
) -> InPCAResult:
    """InPCA embedding of a distance matrix (eq. 2.2.6; weighted version §2.5.3.2).

    ``W = -L D L / 2`` with ``L = I - 1/m``; the eigenvalues of W sorted by |λ| give the axes,
    coordinates are ``U sqrt(|Λ|)`` and negative eigenvalues are kept as time-like axes, so
    ``Σ_k sign(λ_k) (X_ik - X_jk)² = D_ij`` on the full embedding (eq. 2.2.7).

    With ``weights`` μ (multiplicities), centring uses the μ-weighted means and the
    eigenproblem is that of ``W diag(μ)``; the coordinates equal those of plain InPCA on the
    models repeated μ times (weights are normalised to mean 1, so uniform weights give plain
    InPCA exactly).

    Args:
        D: (m, m) symmetric matrix of distances (e.g. Bhattacharyya, eq. 2.2.2).
        n_components: number of axes k to keep (default: all m). A small k on a large matrix
            uses a partial (Lanczos) eigensolver.
        weights: optional (m,) non-negative multiplicities.

    Returns:
        :class:`InPCAResult`.

    Raises:
        ValueError: if D is not square, symmetric and finite, or ``n_components`` is not in
            [1, m].
    """
    Dt = _check_distance_matrix(D)
    m = Dt.shape[0]
    k = (
        m
        if n_components is None
        else _as_int(n_components, "n_components", f"an integer in [1, {m}]")
    )
    if not 1 <= k <= m:
        raise ValueError(f"`n_components` must be an integer in [1, {m}], got {n_components!r}")
    Dt = Dt.to(torch.float64) if Dt.dtype != torch.float64 else Dt
    w = _check_weights(weights, m, Dt)
    r, g = _centring(Dt, w)
    W = -0.5 * (Dt - r[:, None] - r[None, :] + g)
    W = 0.5 * (W + W.T)  # exact symmetry for eigh
    if w is None:
        total = W.square().sum()
        lam, V = _top_eigenpairs(W, k)
        U = V
    else:
        sw = w.sqrt()
        M = sw[:, None] * W * sw[None, :]
        total = M.square().sum()
        lam, V = _top_eigenpairs(M, k)
        # Eigenvectors of W diag(w): U = diag(w)^(-1/2) V, normalised so Σ w u² = 1.
        U = V / torch.where(sw > 0, sw, torch.ones_like(sw))[:, None]
        zero = w == 0
        if bool(zero.any()):
            # Models of weight 0 do not shape the axes; like any new model they sit at their
            # projection (eq. 2.2.9): U_u = (W diag(w) U)_u / λ.
            U[zero] = (W[zero] * w[None, :]) @ U / lam
    U = _deterministic_signs(U, None if w is None else w > 0)
    coords = U * lam.abs().sqrt()
    return InPCAResult(
        coords=coords,
        eigenvalues=lam,
        eigenvectors=U,
        row_means=r,
        grand_mean=g,
        total_stress=total,
        weights=w,
    )


def explained_stress(
    eigenvalues: ArrayLike, k: int, total_stress: ArrayLike | float | None = None
) -> Tensor:
    """Fraction of the centred distance matrix kept by the top k axes (eq. 2.2.8).

    ``1 - sqrt(Σ_{j>k} λ_j² / Σ_j λ_j²)``.

    Args:
        eigenvalues: (K,) eigenvalues sorted by |λ| descending.
        k: number of leading axes, 0 <= k <= K.
        total_stress: ``Σ_j λ_j²`` over *all* eigenvalues, when ``eigenvalues`` holds only the
            leading ones (``InPCAResult.total_stress``). Default: the sum over ``eigenvalues``.

    Returns:
        0-dim tensor in [0, 1].
    """
    lam = as_tensor(eigenvalues, "eigenvalues")
    k = _as_int(k, "k", f"an integer in [0, {lam.numel()}]")
    if lam.ndim != 1 or lam.numel() == 0:
        raise ValueError(
            f"`eigenvalues` must be a non-empty 1-D array, got shape {tuple(lam.shape)}"
        )
    if not 0 <= k <= lam.numel():
        raise ValueError(f"`k` must be an integer in [0, {lam.numel()}], got {k!r}")
    sq = lam.to(torch.float64).square()
    if total_stress is None:  # every eigenvalue is here: sum the tail directly
        total, rest = sq.sum(), sq[k:].sum()
    else:
        total = torch.as_tensor(total_stress, dtype=torch.float64)
        rest = (total - sq[:k].sum()).clamp_min(0)
    if float(total) <= 0:
        return torch.tensor(1.0, dtype=torch.float64)
    return 1 - (rest / total).sqrt()


def minkowski_sq_distance(X: ArrayLike, Y: ArrayLike | None = None, *, signs: ArrayLike) -> Tensor:
    """Squared Minkowski distances ``Σ_k sign_k (X_ik - Y_jk)²`` (eq. 2.2.7).

    Args:
        X: (m, k) coordinates.
        Y: (n, k) coordinates, or None for pairs within X.
        signs: (k,) +1 (space-like) / -1 (time-like), e.g. ``InPCAResult.signs``.

    Returns:
        (m, n) squared distances (can be negative between time-like separated points).
    """
    Xt = as_tensor(X, "X")
    Yt = Xt if Y is None else as_tensor(Y, "Y").to(device=Xt.device, dtype=Xt.dtype)
    s = as_tensor(signs, "signs").to(device=Xt.device, dtype=Xt.dtype)
    if Xt.ndim != 2 or Yt.ndim != 2 or Xt.shape[1] != Yt.shape[1] or s.shape != (Xt.shape[1],):
        raise ValueError(
            f"`X` (m, k), `Y` (n, k) and `signs` (k,) must agree, got {tuple(Xt.shape)}, "
            f"{tuple(Yt.shape)} and {tuple(s.shape)}"
        )
    out = torch.empty((Xt.shape[0], Yt.shape[0]), dtype=Xt.dtype, device=Xt.device)
    step = max(1, 2**22 // max(1, Yt.shape[0] * Xt.shape[1]))
    for i in range(0, Xt.shape[0], step):  # direct differences: no cancellation
        diff = Xt[i : i + step, None, :] - Yt[None, :, :]
        out[i : i + step] = (diff.square() * s).sum(-1)
    return out


def explained_pairwise_distance(D: ArrayLike, coords: ArrayLike, signs: ArrayLike) -> Tensor:
    """How well embedded coordinates reproduce the distances (eq. 2.4.2).

    ``1 - Σ_ij |D_ij - ||X_i - X_j||²| / Σ_ij D_ij`` with the Minkowski norm.

    Args:
        D: (m, m) distances.
        coords: (m, k) coordinates of the same models.
        signs: (k,) Minkowski signature.

    Returns:
        0-dim tensor (1 = perfect; can be negative for a poor embedding).
    """
    Dt = as_tensor(D, "D")
    X = as_tensor(coords, "coords")
    if Dt.ndim != 2 or Dt.shape[0] != Dt.shape[1] or X.ndim != 2 or X.shape[0] != Dt.shape[0]:
        raise ValueError(
            f"`D` must be (m, m) and `coords` (m, k) for the same m, got {tuple(Dt.shape)} and "
            f"{tuple(X.shape)}"
        )
    E = minkowski_sq_distance(X, signs=signs).to(Dt.dtype)
    total = Dt.sum()
    if float(total) <= 0:
        raise ValueError("`D` must have a positive sum")
    return 1 - (Dt - E).abs().sum() / total


def project_from_stats(
    D_new: ArrayLike,
    row_means: ArrayLike,
    grand_mean: ArrayLike | float,
    eigenvalues: ArrayLike,
    eigenvectors: ArrayLike,
    *,
    weights: ArrayLike | None = None,
) -> Tensor:
    """Embed new models from their distances to the reference models (eq. 2.2.9).

    ``W_wu = -½ (d_wu - mean_u' d_wu' - r_u + g)`` with the reference row means r and grand
    mean g, then ``X_wk = Σ_u W_wu μ_u U_uk / (sign(λ_k) sqrt|λ_k|)``. The sign of λ_k matters:
    the thesis prints ``|Λ|^{-1/2}``, which flips time-like coordinates. Projecting the
    reference models themselves returns their own coordinates.

    Args:
        D_new: (q, m) or (m,) distances from q new models to the m reference models.
        row_means: (m,) ``InPCAResult.row_means``.
        grand_mean: ``InPCAResult.grand_mean``.
        eigenvalues: (k,) ``InPCAResult.eigenvalues``.
        eigenvectors: (m, k) ``InPCAResult.eigenvectors``.
        weights: ``InPCAResult.weights`` (None for plain InPCA).

    Returns:
        (q, k) coordinates ((k,) for a 1-D ``D_new``).
    """
    Dn = as_tensor(D_new, "D_new")
    single = Dn.ndim == 1
    Dn = Dn.unsqueeze(0) if single else Dn
    U = as_tensor(eigenvectors, "eigenvectors")
    lam = as_tensor(eigenvalues, "eigenvalues").to(device=U.device, dtype=U.dtype)
    r = as_tensor(row_means, "row_means").to(device=U.device, dtype=U.dtype)
    m = U.shape[0]
    if Dn.ndim != 2 or Dn.shape[1] != m or r.shape != (m,) or lam.shape != (U.shape[1],):
        raise ValueError(
            f"`D_new` must be (q, m) with m = {m} reference models matching `row_means` (m,) "
            f"and `eigenvalues` (k,) = ({U.shape[1]},); got D_new {tuple(Dn.shape)}, row_means "
            f"{tuple(r.shape)}, eigenvalues {tuple(lam.shape)}"
        )
    if bool((lam == 0).any()):
        raise ValueError("`eigenvalues` must be non-zero to project (drop null axes first)")
    Dn = Dn.to(device=U.device, dtype=U.dtype)
    g = torch.as_tensor(grand_mean, dtype=U.dtype, device=U.device)
    if weights is None:
        mu = None
        own = Dn.mean(1, keepdim=True)
    else:
        mu = as_tensor(weights, "weights", floating=False).to(device=U.device, dtype=U.dtype)
        if mu.shape != (m,) or float(mu.sum()) <= 0:
            raise ValueError(f"`weights` must have shape ({m},) and a positive sum")
        mu = mu * (m / mu.sum())  # the mean-1 normalisation of `inpca`: raw weights work too
        own = (Dn @ (mu / m)).unsqueeze(1)
    Wn = -0.5 * (Dn - own - r[None, :] + g)
    if mu is not None:
        Wn = Wn * mu[None, :]
    X = (Wn @ U) / (torch.sign(lam) * lam.abs().sqrt())
    return X[0] if single else X


def project(
    D_new: ArrayLike,
    D_ref: ArrayLike,
    eigenvalues: ArrayLike,
    eigenvectors: ArrayLike,
    *,
    weights: ArrayLike | None = None,
) -> Tensor:
    """Embed new models into an InPCA embedding of reference models (eq. 2.2.9).

    Args:
        D_new: (q, m) distances from the new models to the m reference models.
        D_ref: (m, m) distances among the reference models (the matrix the embedding was fit on).
        eigenvalues: (k,) eigenvalues of that embedding (signs kept).
        eigenvectors: (m, k) eigenvectors of that embedding.
        weights: the embedding's model weights, if it was weighted.

    Returns:
        (q, k) coordinates; for the reference models themselves, their own coordinates.
    """
    Dr = _check_distance_matrix(D_ref, "D_ref").to(torch.float64)
    w = _check_weights(weights, Dr.shape[0], Dr)
    r, g = _centring(Dr, w)
    return project_from_stats(D_new, r, g, eigenvalues, eigenvectors, weights=w)
