"""Averages of models in prediction space (thesis Table 2.3 and §2.5.4.4)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_manifold.functional._checks import ArrayLike, check_probabilities

__all__ = ["CENTROIDS", "centroid"]

CENTROIDS = ("arithmetic", "geometric", "harmonic", "sqrt_arithmetic", "bhattacharyya", "jeffreys")


def _normalise(x: Tensor) -> Tensor:
    return x / x.sum(-1, keepdim=True)


def _lambert_w(x: Tensor) -> Tensor:
    """Principal branch of Lambert's W for x >= e (here x = e·AM/GM): Halley's iteration."""
    w = x.log() - x.log().log()  # asymptotic start, good for x >= e
    for _ in range(30):
        ew = w.exp()
        f = w * ew - x
        w_new = w - f / (ew * (w + 1) - (w + 2) * f / (2 * w + 2))
        if bool(((w_new - w).abs() <= 1e-15 * w.abs().clamp_min(1)).all()):
            return w_new
        w = w_new
    return w


def _bhattacharyya_centroid(P: Tensor, iters: int = 5000, tol: float = 1e-13) -> Tensor:
    """argmin_Q Σ_i d_B(P_i, Q), sample by sample, by minorise-maximise (EM) steps.

    Per sample the objective is ``-Σ_i log Σ_c s_ic sqrt(q_c)`` with ``s_i = sqrt(p_i)``: concave
    in q after the sign flip, so the maximiser is unique. Jensen's bound with weights
    ``π_ic ∝ s_ic sqrt(q_c)`` gives the update ``q_c ∝ Σ_i π_ic``, which never decreases the
    objective (a plain fixed point of the stationarity condition can oscillate on confident
    models). Started from the normalised sqrt-arithmetic mean (positive wherever any model is).
    """
    S = P.sqrt()
    q = _normalise(S.mean(0).square())
    for _ in range(iters):
        r = q.sqrt()
        pi = S * r  # (m, N, C)
        pi = pi / pi.sum(-1, keepdim=True).clamp_min(torch.finfo(S.dtype).tiny)
        q_new = _normalise(pi.mean(0))
        if float((q_new - q).abs().max()) <= tol:
            return q_new
        q = q_new
    return q


def centroid(P: ArrayLike, kind: str = "arithmetic") -> Tensor:
    """Centroid of m models, sample by sample (Table 2.3).

    Kinds: ``arithmetic`` (mean of p), ``geometric`` (normalised exp mean log p),
    ``harmonic`` (normalised 1 / mean(1/p)), ``sqrt_arithmetic`` (normalised (mean sqrt p)²,
    the Hellinger centroid), ``bhattacharyya`` (argmin of the summed Bhattacharyya distance,
    iterative), ``jeffreys`` (symmetric-KL centroid AM / W(e·AM/GM) for positive measures,
    normalised).

    Args:
        P: (m, N, C) probabilities.
        kind: one of :data:`CENTROIDS`.

    Returns:
        (N, C) probabilities.
    """
    if kind not in CENTROIDS:
        raise ValueError(f"`kind` must be one of {CENTROIDS}, got {kind!r}")
    P3, _ = check_probabilities(P, "P")
    if kind == "arithmetic":
        return P3.mean(0)
    if kind == "sqrt_arithmetic":
        return _normalise(P3.sqrt().mean(0).square())
    if kind == "bhattacharyya":
        return _bhattacharyya_centroid(P3)
    needs_positive = kind in ("geometric", "harmonic", "jeffreys")
    if needs_positive and float(P3.min()) <= 0:
        raise ValueError(f"the {kind} centroid needs strictly positive probabilities in `P`")
    if kind == "geometric":
        return _normalise(P3.log().mean(0).exp())
    if kind == "harmonic":
        return _normalise(1 / (1 / P3).mean(0))
    am = P3.mean(0)
    gm = P3.log().mean(0).exp()
    return _normalise(am / _lambert_w(math.e * am / gm))
