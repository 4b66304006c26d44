"""Imprinting: any representation mapped to a classifier of a target task (thesis ch. 3).

A model that has no classifier for the probe's task (a contrastive encoder, a model trained on
other classes) is mapped onto the task by *imprinting* (eq. 3.2.1): with φ(x) the (penultimate)
features, each class c of the target task gets the classifier row

    w_c = h_c / ‖h_c‖,   h_c = Σ_{x: y=c} φ(x),

and the imprinted model predicts ``log p(c|x) = w_c·φ(x) - logsumexp_c' w_c'·φ(x)``. It is
invariant to orthogonal transforms of φ (§3.5.5). The class sums are split from the prediction
so that data-parallel code can reduce the (C, d) sums (or gather the features) first.

Also here: progress on the classes a model was trained on versus novel classes (fig. 3.2a).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lightning_manifold.functional._checks import ArrayLike, as_tensor, check_labels
from lightning_manifold.functional.progress import per_class_progress_from_log_probs

__all__ = [
    "SeenNovelProgress",
    "class_feature_sums",
    "imprint",
    "imprinted_log_probs",
    "imprinted_weights",
    "seen_novel_progress",
]


def _check_features(features: ArrayLike, name: str = "features") -> Tensor:
    phi = as_tensor(features, name)
    if phi.ndim != 2 or phi.shape[0] == 0 or phi.shape[1] == 0:
        raise ValueError(
            f"`{name}` must be a non-empty (N, d) array of features, got shape {tuple(phi.shape)}"
        )
    return phi


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive integer, got {num_classes!r}")
    return num_classes


def class_feature_sums(features: ArrayLike, labels: ArrayLike, num_classes: int) -> Tensor:
    """Per-class sums of the features, ``h_c = Σ_{x: y=c} φ(x)`` (eq. 3.2.1).

    Sums (not means) so that shards of a probe can be added up (e.g. an all-reduce under DDP).

    Args:
        features: (N, d) features φ(x), float32/float64.
        labels: (N,) integer labels in ``[0, num_classes)``.
        num_classes: C of the target task.

    Returns:
        (C, d) sums in the features' dtype and device; a zero row for a class without samples.
    """
    phi = _check_features(features)
    c = _check_num_classes(num_classes)
    y = check_labels(labels, phi.shape[0], c).to(phi.device)
    sums = torch.zeros((c, phi.shape[1]), dtype=phi.dtype, device=phi.device)
    return sums.index_add_(0, y, phi)


def imprinted_weights(sums: ArrayLike) -> Tensor:
    """Imprinted classifier rows ``w_c = h_c / ‖h_c‖`` (eq. 3.2.1).

    A row whose sum is exactly zero (a representation that is identically zero on that class)
    gets a zero classifier row, i.e. logit 0 for every sample: an all-zero representation maps
    to ignorance P0 instead of NaN. Non-finite sums propagate.

    Args:
        sums: (C, d) class feature sums (:func:`class_feature_sums`).

    Returns:
        (C, d) unit-norm (or zero) rows.
    """
    h = as_tensor(sums, "sums")
    if h.ndim != 2 or h.numel() == 0:
        raise ValueError(f"`sums` must be a non-empty (C, d) array, got shape {tuple(h.shape)}")
    norm = torch.linalg.vector_norm(h, dim=1, keepdim=True)
    return torch.where(norm > 0, h / torch.where(norm > 0, norm, 1.0), torch.zeros_like(h))


def imprinted_log_probs(features: ArrayLike, weights: ArrayLike) -> Tensor:
    """Log-probabilities of the imprinted classifier, ``w_c·φ(x) - logsumexp_c' w_c'·φ(x)``.

    Args:
        features: (N, d) features φ(x).
        weights: (C, d) classifier rows (:func:`imprinted_weights`).

    Returns:
        (N, C) log-probabilities in the wider dtype of the two, on the features' device.
        Non-finite features give non-finite rows (a diverged model; the caller decides).
    """
    phi = _check_features(features)
    w = as_tensor(weights, "weights")
    if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] != phi.shape[1]:
        raise ValueError(
            f"`weights` must have shape (C, d) with d = {phi.shape[1]} (the features' width), "
            f"got {tuple(w.shape)}"
        )
    dtype = torch.float64 if torch.float64 in (phi.dtype, w.dtype) else torch.float32
    logits = phi.to(dtype) @ w.to(device=phi.device, dtype=dtype).T
    return torch.log_softmax(logits, dim=-1)


def imprint(features: ArrayLike, labels: ArrayLike, num_classes: int) -> Tensor:
    """Map a representation onto a task by imprinting (eq. 3.2.1): (N, C) log-probabilities.

    ``imprinted_log_probs(φ, imprinted_weights(class_feature_sums(φ, y, C)))``.

    Args:
        features: (N, d) features φ(x) of the probe samples.
        labels: (N,) labels of the target task, in ``[0, num_classes)``.
        num_classes: C.

    Returns:
        (N, C) log-probabilities.

    Raises:
        ValueError: a class of ``[0, num_classes)`` has no sample (its classifier row is
            undefined), bad shapes or labels.
    """
    phi = _check_features(features)
    c = _check_num_classes(num_classes)
    y = check_labels(labels, phi.shape[0], c).to(phi.device)
    missing = (torch.bincount(y, minlength=c) == 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(
            f"`labels` must hold at least one sample of every class in [0, {c}) to imprint "
            f"(eq. 3.2.1), got none of class(es) {missing}"
        )
    return imprinted_log_probs(phi, imprinted_weights(class_feature_sums(phi, y, c)))


class SeenNovelProgress(NamedTuple):
    """Progress per class, split into classes seen in training and novel ones (fig. 3.2a).

    Attributes:
        per_class: (m, C) progress of each model on the samples of each class (NaN: no sample).
        seen: (C,) bool, True for the classes the model was trained on.
        seen_mean: (m,) mean over the seen classes (NaN if none).
        novel_mean: (m,) mean over the novel classes (NaN if none).
    """

    per_class: Tensor
    seen: Tensor
    seen_mean: Tensor
    novel_mean: Tensor


def seen_novel_progress(
    log_P: ArrayLike, labels: ArrayLike, seen_classes: ArrayLike | list[int]
) -> SeenNovelProgress:
    """Progress on each class's samples, split into seen and novel classes (thesis fig. 3.2a).

    The progress ``t^c`` of a model on class c is its progress (eq. 2.2.4) computed on the
    probe samples of class c alone; the means are plain averages over the classes of each
    group that have samples.

    Args:
        log_P: (m, N, C) or (N, C) log-probabilities (e.g. imprinted onto the union task).
        labels: (N,) labels in ``[0, C)``.
        seen_classes: the classes the model was trained on (a subset of ``[0, C)``).

    Returns:
        A :class:`SeenNovelProgress` (with m = 1 rows for a single model).
    """
    per_class = per_class_progress_from_log_probs(log_P, labels)
    per_class = per_class.reshape(-1, per_class.shape[-1])
    C = per_class.shape[1]
    seen_t = torch.as_tensor(seen_classes).reshape(-1)
    if seen_t.numel() == 0:  # trained on none of the classes (e.g. a self-supervised encoder)
        seen_t = seen_t.long()
    if seen_t.is_floating_point() or seen_t.dtype == torch.bool:
        raise ValueError(f"`seen_classes` must be integer class indices, got dtype {seen_t.dtype}")
    if seen_t.numel() and (int(seen_t.min()) < 0 or int(seen_t.max()) >= C):
        raise ValueError(
            f"`seen_classes` must lie in [0, {C}), got values in "
            f"[{int(seen_t.min())}, {int(seen_t.max())}]"
        )
    seen = torch.zeros(C, dtype=torch.bool, device=per_class.device)
    seen[seen_t.to(per_class.device).long()] = True
    return SeenNovelProgress(
        per_class=per_class,
        seen=seen,
        seen_mean=per_class[:, seen].nanmean(1),
        novel_mean=per_class[:, ~seen].nanmean(1),
    )
