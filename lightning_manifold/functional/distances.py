"""Distances between models in prediction space (thesis §2.2, §2.5.4.3).

A model on a probe of N samples and C classes is an (N, C) matrix of probabilities; a batch of
m models is (m, N, C). Pairwise functions return (m, k) matrices; ``Q=None`` means all pairs
within ``P`` (an (m, m) symmetric matrix with zero diagonal).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_manifold.functional._checks import (
    ArrayLike,
    as_tensor,
    check_labels,
    check_log_probabilities,
    check_probabilities,
    check_same_space,
    common_dtype,
)

__all__ = [
    "bhattacharyya",
    "bhattacharyya_coefficients",
    "bhattacharyya_from_log_probs",
    "bhattacharyya_from_sqrt",
    "distance_to_ignorance",
    "distance_to_ignorance_from_log_probs",
    "distance_to_truth",
    "distance_to_truth_from_log_probs",
    "geodesic_distance",
    "symmetric_kl",
    "symmetric_kl_from_log_probs",
]

# Samples per batched GEMM and models per block: a (samples, rows, cols) block of
# per-sample coefficients stays in cache and the Python loop over blocks costs little.
_SAMPLE_CHUNK = 32
_MODEL_BLOCK = 200
# Coefficients per block when few rows meet many columns (one new model against a reference):
# wider blocks and longer sample chunks there, so a handful of GEMMs covers everything.
_BLOCK_ELEMENTS = 2**20
# Up to this many pairs (a live capture against its basis points or its previous snapshot) one
# log per sample is cheaper than the blocked products' bookkeeping.
_FEW_PAIRS = 8


def _block_shape(m: int, k: int, N: int) -> tuple[int, int, int]:
    """(rows, cols, samples) of one block: square 200x200x32 blocks for large pairwise jobs,
    wide ones with long sample chunks for a few rows against many columns."""
    a = min(m, _MODEL_BLOCK)
    b = min(k, max(_MODEL_BLOCK, _BLOCK_ELEMENTS // (_SAMPLE_CHUNK * a)))
    n = min(N, max(_SAMPLE_CHUNK, _BLOCK_ELEMENTS // (a * b)))
    return a, b, n


def _mirror_upper(D: Tensor) -> Tensor:
    """The (m, m) matrix whose strict upper triangle is that of ``D``, mirrored below, with an
    exactly zero diagonal: symmetric by construction, whatever the kernel did on the diagonal
    blocks (a batched GEMM of a block with itself is not exactly symmetric on every BLAS)."""
    upper = torch.triu(D, 1)
    return upper + upper.T


def _underflow_floor(dtype: torch.dtype) -> float:
    """A floor T with T * T still a normal float: products above it keep full precision."""
    return torch.finfo(dtype).tiny ** 0.49


LogFallback = Callable[[Tensor, Tensor, int, int], Tensor]


def _block_log_bc(
    S_nm: Tensor, T_nk: Tensor, buf: Tensor, exact: LogFallback | None = None
) -> Tensor:
    """Σ_n log Σ_c S[n, i, c] T[n, c, j] for one block of models, one log per many samples.

    S_nm: (N, a, C) and T_nk: (N, C, b) sample-major sqrt-probabilities; buf: scratch of
    (samples per chunk, >= a, >= b). Per-sample coefficients come from a batched GEMM over a chunk
    of samples and are multiplied into a running product; the log of that product is taken
    only when it nears the bottom of the normal range. Entries of a chunk whose own product
    falls below the floor (tiny or zero coefficients) are summed exactly instead: with
    ``exact(i, j, n0, n1)`` (the Σ_n log-coefficient of the model pairs (i, j) over samples
    n0:n1, computed in the log domain), else log by log. Returns (a, b).
    """
    N, a, b = S_nm.shape[0], S_nm.shape[1], T_nk.shape[2]
    chunk = buf.shape[0]
    floor = _underflow_floor(S_nm.dtype)
    acc = torch.zeros((a, b), dtype=S_nm.dtype, device=S_nm.device)
    run = torch.ones((a, b), dtype=S_nm.dtype, device=S_nm.device)
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        G = torch.bmm(S_nm[n0:n1], T_nk[n0:n1], out=buf[: n1 - n0])
        p = G.prod(0)
        if float(p.min()) < floor:  # rare: recompute the small entries exactly
            small = p < floor
            if exact is None:
                acc += torch.where(small, G.log().sum(0), torch.zeros_like(p))
            else:
                i, j = small.nonzero(as_tuple=True)
                acc[i, j] += exact(i, j, n0, n1)
            p = torch.where(small, torch.ones_like(p), p)
        run *= p
        if float(run.min()) < floor:
            acc += run.log()
            run.fill_(1)
    return acc.add_(run.log_())


# All pairs within one set of models: smaller square blocks, so that one chunk of per-sample
# coefficients (16 x 112 x 112 float64, 1.6 MB) stays in cache between the GEMM that writes
# it and the product that reads it; about 1.4x faster than 200 x 200 x 32 for 900 models.
_PAIR_BLOCK = 112
_PAIR_CHUNK = 16


def _pairwise_log_bc(
    S: Tensor,
    T: Tensor | None,
    log_S: Tensor | None = None,
    log_T: Tensor | None = None,
) -> Tensor:
    """Σ_n log Σ_c S[u, n, c] T[v, n, c] for all pairs, blocked over models and samples.

    S: (m, N, C), T: (k, N, C) or None (pairs within S: only blocks on or above the diagonal
    are computed, then mirrored; the caller mirrors the upper triangle of the diagonal blocks
    with :func:`_mirror_upper`). ``log_S``/``log_T``: the same as log-probabilities, when
    known, for exact log-domain sums where coefficients underflow. Returns (m, k).
    """
    symmetric = T is None
    m = S.shape[0]
    S_nm = S.transpose(0, 1).contiguous()  # (N, m, C)
    T_nk = S_nm.transpose(1, 2) if symmetric else T.permute(1, 2, 0).contiguous()  # (N, C, k)
    if symmetric:
        log_T = log_S
    k = T_nk.shape[2]
    out = torch.empty((m, k), dtype=S.dtype, device=S.device)
    ra, cb, chunk = (
        (_PAIR_BLOCK, _PAIR_BLOCK, _PAIR_CHUNK) if symmetric else _block_shape(m, k, S.shape[1])
    )
    ra, cb = min(m, ra), min(k, cb)
    blocks = [(i0, j0) for i0 in range(0, m, ra) for j0 in range(i0 if symmetric else 0, k, cb)]

    def run(todo: list[tuple[int, int]]) -> None:
        buf = torch.empty((chunk, ra, cb), dtype=S.dtype, device=S.device)
        for i0, j0 in todo:
            i1, j1 = min(m, i0 + ra), min(k, j0 + cb)
            exact = None
            if log_S is not None and log_T is not None:
                exact = _log_domain(log_S, log_T, i0, j0)
            view = buf[:, : i1 - i0, : j1 - j0]
            acc = _block_log_bc(S_nm[:, i0:i1], T_nk[:, :, j0:j1], view, exact)
            out[i0:i1, j0:j1] = acc
            if symmetric and j0 != i0:
                out[j0:j1, i0:i1] = acc.T

    threads = torch.get_num_threads()
    # set_num_threads is process-wide: only the main thread (where analyses run) lends its
    # intra-op threads out, never a capture running beside training in another thread
    if (
        not symmetric or S.device.type != "cpu" or threads < 2 or len(blocks) < 4 * threads
        or threading.current_thread() is not threading.main_thread()
    ):  # fmt: skip
        run(blocks)
        return out
    _in_threads(run, blocks, threads)
    return out


def _in_threads(run: Callable[[list[tuple[int, int]]], None], blocks: list, threads: int) -> None:
    """``run`` over interleaved shares of ``blocks`` in ``threads`` Python threads, each torch
    operation on one intra-op thread (restored after).

    The per-sample GEMMs are small (K = C): split over intra-op threads, every operation of
    the loop pays a fork/join barrier, which gave 1.5x on 2 cores and collapsed whenever
    another process took a core; whole blocks per thread need no barrier. Each block is the
    same sequence of operations either way, so the result does not change.
    """
    shares = [blocks[t::threads] for t in range(threads)]
    errors: list[BaseException] = []

    def work(share: list[tuple[int, int]]) -> None:
        try:
            run(share)
        except BaseException as err:  # re-raised in the caller's thread
            errors.append(err)

    torch.set_num_threads(1)
    try:
        pool = [threading.Thread(target=work, args=(sh,)) for sh in shares[1:]]
        for t in pool:
            t.start()
        work(shares[0])
        for t in pool:
            t.join()
    finally:
        torch.set_num_threads(threads)
    if errors:
        raise errors[0]


def _log_domain(log_S: Tensor, log_T: Tensor, i0: int, j0: int) -> LogFallback:
    """Exact Σ_n logsumexp_c (l_u + l_v) / 2 for listed pairs of one block (underflow path)."""

    def exact(i: Tensor, j: Tensor, n0: int, n1: int) -> Tensor:
        out = torch.empty(i.shape[0], dtype=log_S.dtype, device=log_S.device)
        step = max(1, 2**22 // max(1, (n1 - n0) * log_S.shape[2]))
        for s in range(0, i.shape[0], step):
            u, v = i[s : s + step] + i0, j[s : s + step] + j0
            pair = 0.5 * (log_S[u, n0:n1] + log_T[v, n0:n1])  # (pairs, n, C)
            out[s : s + step] = torch.logsumexp(pair, -1).sum(-1)
        return out

    return exact


def _coefficient_blocks(S: Tensor, T: Tensor):
    """Yield chunks of per-sample coefficients for one (rows, cols) block of models.

    S: (a, N, C), T: (b, N, C) sqrt-probabilities. Yields (n_chunk, a, b) tensors
    ``Σ_c S[i, n, c] T[j, n, c]``.
    """
    St = S.transpose(0, 1)
    Tt = T.permute(1, 2, 0)
    for n0 in range(0, S.shape[1], _SAMPLE_CHUNK):
        yield torch.bmm(St[n0 : n0 + _SAMPLE_CHUNK], Tt[n0 : n0 + _SAMPLE_CHUNK])


def _few_pair_distances(S: Any, T: Any) -> Any:
    """(m, k) d_B (eq. 2.2.2) of (m, N, C) and (k, N, C) sqrt-probabilities, for a few pairs
    (one log per sample and pair, no GEMM); torch tensors or numpy arrays (a capture on the
    CPU places its model with numpy)."""
    xp = torch if isinstance(S, Tensor) else np
    D = xp.log(xp.einsum("mnc,knc->mkn", S, T)).sum(-1) / -S.shape[1]
    return xp.clip(D, 0, None)  # rounding can give -1e-17 for identical models


def bhattacharyya_from_sqrt(S: ArrayLike, T: ArrayLike | None = None) -> Tensor:
    """Bhattacharyya distances from sqrt-probabilities (eq. 2.2.2), the fast path.

    ``d_B(P, Q) = -(1/N) Σ_n log Σ_c sqrt(p[n, c]) sqrt(q[n, c])``.

    Per-sample coefficients come from a batched GEMM over samples; logarithms are taken of
    products of groups of coefficients (exact up to rounding; underflowing groups are redone
    factor by factor), and only the upper triangle is computed when ``T`` is None.

    Args:
        S: (m, N, C) or (N, C) square roots of probabilities. Not validated beyond shape.
        T: (k, N, C) or (N, C) square roots of probabilities, or None for all pairs in ``S``.

    Returns:
        (m, k) distances (m, m symmetric with zero diagonal when ``T`` is None). A 2-D input
        drops its model axis from the result.
    """
    S_t = as_tensor(S, "S")
    S3, s_single = (S_t.unsqueeze(0), True) if S_t.ndim == 2 else (S_t, False)
    if S3.ndim != 3 or S3.numel() == 0:
        raise ValueError(
            f"`S` must be non-empty sqrt-probabilities of shape (N, C) or (m, N, C), got "
            f"{tuple(S_t.shape)}"
        )
    N = S3.shape[1]
    if T is None:
        D = _mirror_upper(_pairwise_log_bc(S3, None).div_(-N).clamp_min_(0))
        return D[0, 0] if s_single else D
    T_t = as_tensor(T, "T")
    T3, t_single = (T_t.unsqueeze(0), True) if T_t.ndim == 2 else (T_t, False)
    if T3.ndim != 3 or T3.numel() == 0:
        raise ValueError(
            f"`T` must be non-empty sqrt-probabilities of shape (N, C) or (k, N, C), got "
            f"{tuple(T_t.shape)}"
        )
    check_same_space(S3, T3, "S", "T")
    dtype = common_dtype(S3, T3)
    S3, T3 = S3.to(dtype), T3.to(device=S3.device, dtype=dtype)
    if S3.shape[0] * T3.shape[0] <= _FEW_PAIRS:  # a capture against a few points: direct
        D = _few_pair_distances(S3, T3)
    else:
        D = _pairwise_log_bc(S3, T3).div_(-N).clamp_min_(0)
    if s_single:
        D = D[0]
    if t_single:
        D = D[..., 0]
    return D


def bhattacharyya(P: ArrayLike, Q: ArrayLike | None = None) -> Tensor:
    """Bhattacharyya distance between models (eq. 2.2.2).

    Args:
        P: (m, N, C) or (N, C) probabilities.
        Q: (k, N, C) or (N, C) probabilities, or None for all pairs within ``P``.

    Returns:
        (m, k) distances; (m, m) symmetric with zero diagonal when ``Q`` is None.

    Raises:
        ValueError: on wrong shapes, N/C mismatch, NaN/inf, negative entries or rows that do
            not sum to 1.

    Example::

        >>> P = torch.softmax(torch.randn(4, 100, 10, dtype=torch.float64), -1)
        >>> bhattacharyya(P).shape
        torch.Size([4, 4])
    """
    P3, p_single = check_probabilities(P, "P")
    S = P3.sqrt()
    if Q is None:
        return bhattacharyya_from_sqrt(S[0] if p_single else S)
    Q3, q_single = check_probabilities(Q, "Q")
    check_same_space(P3, Q3, "P", "Q")
    T = Q3.sqrt()
    return bhattacharyya_from_sqrt(S[0] if p_single else S, T[0] if q_single else T)


def bhattacharyya_from_log_probs(log_P: ArrayLike, log_Q: ArrayLike | None = None) -> Tensor:
    """Bhattacharyya distance (eq. 2.2.2) from log-probabilities (computed in float64).

    Shapes as in :func:`bhattacharyya`; the result has the inputs' floating dtype. Per-sample
    coefficients that underflow (confident models that disagree) are summed in the log domain,
    ``logsumexp_c (log p + log q) / 2``, so the distance is finite and exact for every finite
    log-probability.
    """
    L3, p_single = check_log_probabilities(log_P, "log_P")
    out_dtype = L3.dtype
    L3 = L3.to(torch.float64)
    S = (0.5 * L3).exp()
    N = L3.shape[1]
    if log_Q is None:
        D = _mirror_upper(_pairwise_log_bc(S, None, L3, None).div_(-N).clamp_min_(0))
        return (D[0, 0] if p_single else D).to(out_dtype)
    M3, q_single = check_log_probabilities(log_Q, "log_Q")
    check_same_space(L3, M3, "log_P", "log_Q")
    out_dtype = common_dtype(L3.to(out_dtype), M3)
    M3 = M3.to(device=L3.device, dtype=torch.float64)
    D = _pairwise_log_bc(S, (0.5 * M3).exp(), L3, M3).div_(-N).clamp_min_(0)
    return _squeeze(D, p_single, q_single).to(out_dtype)


def bhattacharyya_coefficients(P: Tensor, Q: Tensor) -> Tensor:
    """Per-sample Bhattacharyya coefficients of paired models.

    Args:
        P, Q: (..., N, C) probabilities with broadcastable leading axes (not validated).

    Returns:
        (..., N) ``Σ_c sqrt(p q)``, clamped to [0, 1] against rounding.
    """
    return (P * Q).sqrt().sum(-1).clamp_(0, 1)


def _squeeze(D: Tensor, p_single: bool, q_single: bool) -> Tensor:
    if p_single:
        D = D[0]
    if q_single:
        D = D[..., 0]
    return D


def geodesic_distance(P: ArrayLike, Q: ArrayLike | None = None) -> Tensor:
    """Geodesic distance on the product of spheres (eq. 2.5.4).

    ``d_G(P, Q) = (1/N) Σ_n arccos Σ_c sqrt(p[n, c] q[n, c])``.

    Args:
        P: (m, N, C) or (N, C) probabilities.
        Q: (k, N, C) or (N, C) probabilities, or None for all pairs within ``P``.

    Returns:
        (m, k) distances in radians per sample, in [0, pi/2].
    """
    P3, p_single = check_probabilities(P, "P")
    Q3, q_single = (P3, p_single) if Q is None else check_probabilities(Q, "Q")
    check_same_space(P3, Q3, "P", "Q")
    dtype = common_dtype(P3, Q3)
    S = P3.to(dtype).sqrt()
    T = Q3.to(device=S.device, dtype=dtype).sqrt()
    m, k, N = S.shape[0], T.shape[0], S.shape[1]
    symmetric = Q is None
    out = torch.empty((m, k), dtype=dtype, device=S.device)
    for i0 in range(0, m, _MODEL_BLOCK):
        i1 = min(m, i0 + _MODEL_BLOCK)
        for j0 in range(i0 if symmetric else 0, k, _MODEL_BLOCK):
            j1 = min(k, j0 + _MODEL_BLOCK)
            acc = torch.zeros((i1 - i0, j1 - j0), dtype=dtype, device=S.device)
            for G in _coefficient_blocks(S[i0:i1], T[j0:j1]):
                acc += G.clamp_(0, 1).arccos_().sum(0)
            out[i0:i1, j0:j1] = acc / N
            if symmetric and j0 != i0:
                out[j0:j1, i0:i1] = out[i0:i1, j0:j1].T
    if symmetric:  # diagonal blocks came from one GEMM each: mirror their upper triangles
        out = _mirror_upper(out)
    return _squeeze(out, p_single, q_single)


def _skl(P: Tensor, LP: Tensor, Q: Tensor, LQ: Tensor) -> Tensor:
    """Pairwise symmetric KL from probabilities and logs (zeros allowed, -inf logs allowed).

    A class has zero probability where its log is -inf: an exp that underflows to 0 from a
    finite log still counts as a positive probability (its terms come from the logs).
    """
    N = P.shape[1]
    zP, zQ = torch.isneginf(LP), torch.isneginf(LQ)
    LPf = torch.where(zP, torch.zeros_like(LP), LP).flatten(1)
    LQf = torch.where(zQ, torch.zeros_like(LQ), LQ).flatten(1)
    Pf, Qf = P.flatten(1), Q.flatten(1)
    self_p = (Pf * LPf).sum(1)
    self_q = (Qf * LQf).sum(1)
    cross = Pf @ LQf.T + LPf @ Qf.T
    D = (self_p[:, None] + self_q[None, :] - cross) / N
    # A class with zero probability in exactly one model makes the divergence infinite.
    one_sided = (~zP).flatten(1).to(P.dtype) @ zQ.flatten(1).to(P.dtype).T
    one_sided += zP.flatten(1).to(P.dtype) @ (~zQ).flatten(1).to(P.dtype).T
    D = torch.where(one_sided > 0, torch.full_like(D, math.inf), D)
    return D.clamp_min_(0)


def symmetric_kl(P: ArrayLike, Q: ArrayLike | None = None) -> Tensor:
    """Symmetrised Kullback-Leibler divergence, IsKL (eq. 2.5.3).

    ``d_sKL(P, Q) = (1/N) Σ_n Σ_c (p - q) log(p / q)``; infinite when one model gives a class
    zero probability and the other does not.

    Args:
        P: (m, N, C) or (N, C) probabilities.
        Q: (k, N, C) or (N, C) probabilities, or None for all pairs within ``P``.

    Returns:
        (m, k) divergences.
    """
    P3, p_single = check_probabilities(P, "P")
    Q3, q_single = (P3, p_single) if Q is None else check_probabilities(Q, "Q")
    check_same_space(P3, Q3, "P", "Q")
    dtype = common_dtype(P3, Q3)
    P3, Q3 = P3.to(dtype), Q3.to(device=P3.device, dtype=dtype)
    D = _skl(P3, P3.log(), Q3, Q3.log())
    if Q is None:  # the cross terms of (u, v) and (v, u) are rounded differently: mirror
        D = _mirror_upper(D)
    return _squeeze(D, p_single, q_single)


def symmetric_kl_from_log_probs(log_P: ArrayLike, log_Q: ArrayLike | None = None) -> Tensor:
    """Symmetrised KL (eq. 2.5.3) from log-probabilities; shapes as :func:`symmetric_kl`."""
    L3, p_single = check_log_probabilities(log_P, "log_P")
    M3, q_single = (L3, p_single) if log_Q is None else check_log_probabilities(log_Q, "log_Q")
    check_same_space(L3, M3, "log_P", "log_Q")
    dtype = common_dtype(L3, M3)
    L3, M3 = L3.to(dtype), M3.to(device=L3.device, dtype=dtype)
    D = _skl(L3.exp(), L3, M3.exp(), M3)
    if log_Q is None:
        D = _mirror_upper(D)
    return _squeeze(D, p_single, q_single)


def distance_to_ignorance_from_log_probs(log_P: ArrayLike) -> Tensor:
    """d_B(P, P0) to ignorance (p = 1/C everywhere), from log-probabilities.

    ``d_B(P, P0) = log(C)/2 - (1/N) Σ_n log Σ_c sqrt(p[n, c])``, with the inner sum taken as a
    log-sum-exp of ``log p / 2`` so it is exact for any finite logits.

    Args:
        log_P: (m, N, C) or (N, C) log-probabilities.

    Returns:
        (m,) distances, or a 0-dim tensor for a single (N, C) model.
    """
    L, single = check_log_probabilities(log_P, "log_P")
    d = _distance_to_ignorance(L)
    return d[0] if single else d


def _distance_to_ignorance(L: Tensor) -> Tensor:
    """(m,) d_B to ignorance of checked (m, N, C) log-probabilities."""
    C = L.shape[-1]
    return (0.5 * math.log(C) - torch.logsumexp(0.5 * L, -1).mean(-1)).clamp_min_(0)


def distance_to_ignorance(P: ArrayLike) -> Tensor:
    """d_B(P, P0) to ignorance from probabilities.

    See :func:`distance_to_ignorance_from_log_probs`; returns (m,) or a 0-dim tensor.
    """
    P3, single = check_probabilities(P, "P")
    C = P3.shape[-1]
    d = (0.5 * math.log(C) - P3.sqrt().sum(-1).log().mean(-1)).clamp_min_(0)
    return d[0] if single else d


def distance_to_truth_from_log_probs(log_P: ArrayLike, labels: ArrayLike) -> Tensor:
    """d_B(P, P*) to the truth (one-hot labels): half the cross-entropy.

    ``d_B(P, P*) = -(1/(2N)) Σ_n log p[n, y_n]``: finite for every finite logit because it
    never forms a probability that could underflow.

    Args:
        log_P: (m, N, C) or (N, C) log-probabilities.
        labels: (N,) integer labels in [0, C).

    Returns:
        (m,) distances, or a 0-dim tensor for a single model.
    """
    L, single = check_log_probabilities(log_P, "log_P")
    y = check_labels(labels, L.shape[1], L.shape[2]).to(L.device)
    d = _distance_to_truth(L, y)
    return d[0] if single else d


def _distance_to_truth(L: Tensor, labels: Tensor) -> Tensor:
    """(m,) d_B to the truth of checked (m, N, C) log-probabilities and (N,) labels."""
    picked = L.gather(-1, labels.view(1, -1, 1).expand(L.shape[0], -1, 1)).squeeze(-1)
    return -0.5 * picked.mean(-1)


def distance_to_truth(P: ArrayLike, labels: ArrayLike) -> Tensor:
    """d_B(P, P*) from probabilities (inf where a true class has probability exactly 0).

    Prefer :func:`distance_to_truth_from_log_probs`: probabilities underflow, log-probabilities
    do not.
    """
    P3, single = check_probabilities(P, "P")
    y = check_labels(labels, P3.shape[1], P3.shape[2]).to(P3.device)
    picked = P3.gather(-1, y.view(1, -1, 1).expand(P3.shape[0], -1, 1)).squeeze(-1)
    d = -0.5 * picked.log().mean(-1)
    return d[0] if single else d
