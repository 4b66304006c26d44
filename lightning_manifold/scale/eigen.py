"""Top-k InPCA (eq. 2.2.6) of a large distance matrix on disk, with a partial eigensolver.

``W = -L D L / 2`` with ``L = I - 11^T/m`` is never formed. With row means ``r = D 1 / m``
and grand mean ``g = 1^T r / m`` (D symmetric),

    W_ij = -1/2 (D_ij - r_i - r_j + g),
    W x  = -1/2 (D x - r (1^T x) - 1 (r^T x) + g (1^T x) 1),

so one product ``W x`` is one pass over the rows of D. ARPACK's Lanczos (``eigsh`` with
``which="LM"``) returns the eigenpairs of largest |lambda| of both signs: the time-like axes
(negative eigenvalues) are kept. ``||W||_F^2`` (the total stress, denominator of eq. 2.2.8) is
accumulated block by block.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import Tensor

from lightning_manifold.scale._npyio import NpyLayout, npy_layout
from lightning_manifold.scale._progress import progress_bar
from lightning_manifold.scale.distances import DEFAULT_MEMORY_BUDGET, BlockedDistances

if TYPE_CHECKING:
    from lightning_manifold.functional import InPCAResult

__all__ = ["DistanceRows", "inpca_memmap"]


class DistanceRows:
    """Row blocks of a square float64 distance matrix held in a file, an array or a tensor.

    A file is read with explicit offsets, or loaded once into memory when ``m * m * 8`` bytes
    fit the budget (one copy of the matrix, nothing else of size m^2).

    Args:
        D: an ``.npy`` path, a :class:`BlockedDistances`, an (m, m) numpy array / memmap or
            tensor.
        memory_budget: bytes for row blocks (and for the whole matrix if it fits).
        block_rows: rows per block (default: as many as fit in half the budget, at most
            256 MiB per block).
        name: argument name for error messages.

    Raises:
        ValueError: if D is not square, or a :class:`BlockedDistances` is incomplete.
    """

    def __init__(
        self,
        D: str | os.PathLike[str] | BlockedDistances | np.ndarray | Tensor,
        *,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        block_rows: int | None = None,
        name: str = "D",
    ) -> None:
        self._layout: NpyLayout | None = None
        self._array: np.ndarray | None = None
        if isinstance(D, BlockedDistances):
            if not D.complete:
                raise ValueError(
                    f"`{name}` must be a complete distance matrix, got {D.blocks_done} of "
                    f"{D.blocks_total} blocks (resume the computation first)"
                )
            D = D.path
        if isinstance(D, str | os.PathLike):
            self._layout = npy_layout(Path(D))
            shape = self._layout.shape
        elif isinstance(D, Tensor):
            self._array = D.detach().to(device="cpu", dtype=torch.float64).numpy()
            shape = self._array.shape
        elif isinstance(D, np.ndarray):
            self._array = D
            shape = D.shape
        else:
            raise TypeError(
                f"`{name}` must be a path, BlockedDistances, numpy array or tensor, got "
                f"{type(D).__name__}"
            )
        if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
            raise ValueError(f"`{name}` must be a square (m, m) matrix, got shape {tuple(shape)}")
        self.m = int(shape[0])
        if block_rows is None:
            # a block (and its temporary) stays within half the budget and 256 MiB
            block_rows = max(1, min(memory_budget // 2, 2**28) // (8 * self.m))
        if block_rows < 1:
            raise ValueError(f"`block_rows` must be >= 1, got {block_rows}")
        self.block_rows = min(int(block_rows), self.m)
        if self._layout is not None and self.m * self.m * 8 <= memory_budget // 2:
            self._array = self._layout.read_rows(0, self.m).astype(np.float64, copy=False)
            self._layout = None

    @property
    def in_memory(self) -> bool:
        """Whether the whole matrix is in memory (products need no blocking)."""
        return self._array is not None and not isinstance(self._array, np.memmap)

    def __len__(self) -> int:
        return -(-self.m // self.block_rows)

    def block(self, b: int) -> tuple[int, int, np.ndarray]:
        """(start, stop, rows start:stop as float64 (stop - start, m))."""
        start = b * self.block_rows
        stop = min(self.m, start + self.block_rows)
        if self._layout is not None:
            rows = self._layout.read_rows(start, stop)
        else:
            assert self._array is not None
            rows = self._array[start:stop]
        return start, stop, np.asarray(rows, dtype=np.float64)

    def matmat(self, X: np.ndarray) -> np.ndarray:
        """``D @ X`` for X (m,) or (m, p), in row blocks."""
        if self.in_memory:
            assert self._array is not None
            return np.asarray(self._array, dtype=np.float64) @ X
        out = np.empty((self.m, *X.shape[1:]), dtype=np.result_type(X, np.float64))
        for b in range(len(self)):
            start, stop, rows = self.block(b)
            out[start:stop] = rows @ X
        return out

    def dense(self) -> np.ndarray:
        """The whole (m, m) matrix in memory (small matrices only)."""
        if self._array is not None:
            return np.asarray(self._array, dtype=np.float64)
        assert self._layout is not None
        return self._layout.read_rows(0, self.m).astype(np.float64, copy=False)


def _centring_stats(
    rows: DistanceRows, mu: np.ndarray | None, progress: bool
) -> tuple[np.ndarray, float, float]:
    """Row means r (m,), grand mean g and the total stress in two passes over D (eq. 2.2.6).

    Unweighted: ``r = D 1 / m``, ``g = mean(r)``, total stress ``||W||_F^2``. With normalised
    weights ``mu`` (summing to 1, §2.5.3.2): ``r = D mu``, ``g = mu^T r`` and the total stress
    is ``||diag(sqrt w) W diag(sqrt w)||_F^2`` with ``w = m mu`` (weights of mean 1), as in
    :func:`lightning_manifold.functional.inpca`.

    Also checks that D is finite, has a zero diagonal and that its diagonal blocks are
    symmetric (to 1e-6 relative, as :func:`lightning_manifold.functional.inpca`).
    """
    m = rows.m
    r = np.zeros(m)
    bar = progress_bar(progress, total=2 * len(rows), desc="InPCA centring", unit="block")
    try:
        for b in range(len(rows)):
            start, stop, blk = rows.block(b)
            if not np.isfinite(blk).all():
                raise ValueError(f"`D` must be finite, got NaN or inf in rows {start}:{stop}")
            diag = blk[np.arange(stop - start), np.arange(start, stop)]
            sub = blk[:, start:stop]
            scale = max(float(np.abs(sub).max()), 1e-300)
            if np.abs(diag).max() > 1e-12 * scale:
                raise ValueError(
                    f"`D` must have a zero diagonal, got |D_ii| up to {np.abs(diag).max():.3g}"
                )
            if np.abs(sub - sub.T).max() > 1e-6 * scale:
                raise ValueError(
                    f"`D` must be symmetric, got an asymmetry of {np.abs(sub - sub.T).max():.3g} "
                    f"in rows {start}:{stop}"
                )
            r[start:stop] = blk.sum(1) / m if mu is None else blk @ mu
            bar.update(1)
        g = float(r.mean()) if mu is None else float(mu @ r)
        sw = None if mu is None else np.sqrt(mu * m)
        stress = 0.0
        for b in range(len(rows)):
            start, stop, blk = rows.block(b)
            w = blk - r[start:stop, None]
            w -= r[None, :]
            w += g
            if sw is not None:
                w *= sw[start:stop, None]
                w *= sw[None, :]
            stress += float(np.einsum("ij,ij->", w, w)) / 4.0
            bar.update(1)
    finally:
        bar.close()
    return r, g, stress


def _flip_signs(U: np.ndarray) -> np.ndarray:
    """Deterministic eigenvector signs: the largest-|component| entry of each column is > 0."""
    idx = np.argmax(np.abs(U), axis=0)
    signs = np.sign(U[idx, np.arange(U.shape[1])])
    signs[signs == 0] = 1.0
    return U * signs


def inpca_memmap(
    D: str | os.PathLike[str] | BlockedDistances | np.ndarray | Tensor,
    n_components: int = 3,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    block_rows: int | None = None,
    tol: float = 0.0,
    maxiter: int | None = None,
    ncv: int | None = None,
    seed: int = 0,
    weights: np.ndarray | Tensor | None = None,
    progress: bool = True,
) -> InPCAResult:
    """Top-k InPCA (eq. 2.2.6) of a large symmetric distance matrix without forming W.

    Eigenpairs of ``W = -L D L / 2`` of largest |lambda| (both signs) by Lanczos iteration
    (``scipy.sparse.linalg.eigsh``, ``which="LM"``) on an operator that applies W through row
    blocks of D. Coordinates are ``X = U sqrt(|Lambda|)``, eigenvalues sorted by |lambda|
    descending with their signs; eigenvector signs are fixed so that each column's
    largest-|component| entry is positive. The result plugs into
    :func:`lightning_manifold.functional.project_from_stats` (eq. 2.2.9) and
    :func:`lightning_manifold.functional.explained_stress` (eq. 2.2.8).

    Memory: the row blocks in flight (``block_rows * m * 8`` bytes, twice while accumulating
    the stress) plus O(m * ncv) Lanczos vectors; a matrix file whose ``m * m * 8`` bytes fit
    half the budget is read into memory once.

    Args:
        D: (m, m) symmetric distances with zero diagonal: an ``.npy`` path, a complete
            :class:`BlockedDistances`, a numpy array / memmap, or a tensor.
        n_components: k, the number of eigenpairs (1 <= k <= m).
        memory_budget: bytes for row blocks of D.
        block_rows: rows of D per block (default from ``memory_budget``).
        tol: relative accuracy of the eigenvalues (0: machine precision).
        maxiter: maximum Arnoldi update iterations (default ARPACK's, ``10 m``).
        ncv: Lanczos vectors (default ``max(2k + 1, 24)``, at most m).
        seed: seed of the starting vector (results are deterministic for a given seed).
        weights: optional (m,) non-negative multiplicities (weighted InPCA, §2.5.3.2, same
            conventions as :func:`lightning_manifold.functional.inpca`: centring with the
            normalised weights, eigenpairs of ``diag(sqrt w) W diag(sqrt w)``, eigenvectors
            ``U = V / sqrt(w)``, weights stored normalised to mean 1).
        progress: show progress bars (passes over D, matrix products).

    Returns:
        :class:`lightning_manifold.functional.InPCAResult` with coords (m, k), eigenvalues (k,),
        eigenvectors (m, k), row_means (m,), grand_mean, total_stress (= ||W||_F^2) as float64
        CPU tensors and ``weights`` (None, or the (m,) weights normalised to mean 1).

    Raises:
        ValueError: if D is not square, symmetric, finite with zero diagonal, or k is out of
            range.
    """
    from lightning_manifold import functional as F

    rows = DistanceRows(D, memory_budget=memory_budget, block_rows=block_rows)
    m = rows.m
    if isinstance(n_components, bool) or not isinstance(n_components, int | np.integer):
        raise TypeError(f"`n_components` must be an int, got {type(n_components).__name__}")
    k = int(n_components)
    if not 1 <= k <= m:
        raise ValueError(f"`n_components` must be in [1, m] = [1, {m}], got {k}")
    w = None
    mu = None
    if weights is not None:
        w = np.asarray(
            weights.detach().to("cpu") if isinstance(weights, Tensor) else weights, np.float64
        )
        if w.shape != (m,):
            raise ValueError(f"`weights` must have shape (m,) = ({m},), got {w.shape}")
        if not np.isfinite(w).all() or w.min() < 0 or w.sum() <= 0:
            raise ValueError("`weights` must be finite, non-negative and not all zero")
        w = w * (m / w.sum())
        mu = w / m
    if k >= m - 1 or m <= 3:
        # ARPACK needs k < m - 1; such a matrix is small, so decompose it densely.
        dense = torch.from_numpy(rows.dense())
        return F.inpca(dense, k, weights=None if w is None else torch.from_numpy(w))
    r, g, stress = _centring_stats(rows, mu, progress)
    sw = None if w is None else np.sqrt(w)

    def matmat(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if sw is not None:  # diag(sqrt w) W diag(sqrt w) X
            X = X * (sw if X.ndim == 1 else sw[:, None])
        Y = rows.matmat(X)
        s = X.sum(0)
        rx = r @ X
        Y -= np.multiply.outer(r, s)
        Y -= rx
        Y += g * s
        Y *= -0.5
        if sw is not None:
            Y *= sw if Y.ndim == 1 else sw[:, None]
        bar.update(1 if X.ndim == 1 else X.shape[1])
        return Y

    op = LinearOperator((m, m), matvec=matmat, matmat=matmat, dtype=np.float64)
    n_cv = min(m, max(2 * k + 1, 24)) if ncv is None else int(ncv)
    v0 = np.random.default_rng(seed).standard_normal(m)
    bar = progress_bar(progress, total=None, desc="InPCA eigsh (W x products)", unit="matvec")
    try:
        lam, U = eigsh(op, k=k, which="LM", v0=v0, ncv=n_cv, tol=tol, maxiter=maxiter)
    finally:
        bar.close()
    order = np.argsort(-np.abs(lam), kind="stable")
    lam = lam[order]
    U = U[:, order]
    if sw is not None:
        U = U / np.where(sw > 0, sw, 1.0)[:, None]
    U = _flip_signs(U)
    coords = U * np.sqrt(np.abs(lam))
    as_t = torch.from_numpy
    return F.InPCAResult(
        coords=as_t(np.ascontiguousarray(coords)),
        eigenvalues=as_t(np.ascontiguousarray(lam)),
        eigenvectors=as_t(np.ascontiguousarray(U)),
        row_means=as_t(r),
        grand_mean=torch.tensor(g, dtype=torch.float64),
        total_stress=torch.tensor(stress, dtype=torch.float64),
        weights=None if w is None else as_t(w),
    )
