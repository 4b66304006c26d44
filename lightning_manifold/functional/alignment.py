"""Aligning embeddings between refits (thesis §2.4: Kabsch-Umeyama with sign flips)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lightning_manifold.functional._checks import ArrayLike, as_tensor

__all__ = ["Alignment", "procrustes_align"]


class Alignment(NamedTuple):
    """Result of :func:`procrustes_align`.

    Attributes:
        aligned: (m, k) the moved points.
        rotation: (k, k) orthogonal matrix (reflections allowed) applied after centring.
        rmsd: 0-dim root-mean-square deviation between the aligned points and the target.
    """

    aligned: Tensor
    rotation: Tensor
    rmsd: Tensor


def _kabsch(A: Tensor, B: Tensor) -> Tensor:
    """Orthogonal R minimising ||A R - B|| (reflections allowed, so axes may flip sign)."""
    U, _, Vh = torch.linalg.svd(A.T @ B)
    return U @ Vh


def procrustes_align(
    X: ArrayLike, target: ArrayLike, *, signs: ArrayLike | None = None
) -> Alignment:
    """Translate and rotate X onto ``target`` (orthogonal Procrustes / Kabsch-Umeyama).

    Both are centred, the best orthogonal map (rotations and sign flips) is applied, and the
    target's centre is added back. With ``signs`` (the Minkowski signature) space-like and
    time-like axes are aligned separately, because a rotation that mixes them is not an
    isometry of the embedding.

    Args:
        X: (m, k) points to move.
        target: (m, k) the same points in the reference frame.
        signs: optional (k,) +1/-1 signature.

    Returns:
        :class:`Alignment`.
    """
    A = as_tensor(X, "X")
    B = as_tensor(target, "target").to(device=A.device, dtype=A.dtype)
    if A.ndim != 2 or A.shape != B.shape or A.shape[0] < 1:
        raise ValueError(
            f"`X` and `target` must be (m, k) of the same shape, got {tuple(A.shape)} and "
            f"{tuple(B.shape)}"
        )
    ca, cb = A.mean(0), B.mean(0)
    A0, B0 = A - ca, B - cb
    k = A.shape[1]
    R = torch.zeros((k, k), dtype=A.dtype, device=A.device)
    if signs is None:
        groups = [torch.arange(k, device=A.device)]
    else:
        s = as_tensor(signs, "signs").to(A.device)
        if s.shape != (k,):
            raise ValueError(f"`signs` must have shape ({k},), got {tuple(s.shape)}")
        space, time = (s >= 0).nonzero().squeeze(-1), (s < 0).nonzero().squeeze(-1)
        groups = [g for g in (space, time) if g.numel()]
    for g in groups:
        R[g[:, None], g[None, :]] = _kabsch(A0[:, g], B0[:, g])
    aligned = A0 @ R + cb
    rmsd = (aligned - B).square().sum(-1).mean().sqrt()
    return Alignment(aligned, R, rmsd)
