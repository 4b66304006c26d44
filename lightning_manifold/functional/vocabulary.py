"""Token-level predictions over large vocabularies (thesis §3.5.2, applied position by position).

A language model on a probe of sequences is a classifier at every counted position: each
(sequence, position) whose target is not the ignore index is one probe sample, and its
prediction is a distribution over a vocabulary of V tokens (V = 32k to 150k). Nothing here holds
an (n, V) array in float32/64: the logits are read in column chunks of the vocabulary, with an
online log-sum-exp (running maximum, rescaled sums), in one pass.

Two fixed reductions keep the stored distribution small (K columns instead of V):

- **partition** ("top-k + rest", exact where it matters): the vocabulary of sample n is split into
  fixed cells: its target token, the k tokens most frequent among the probe's targets (another
  one in place of the target if the target is among them) and the rest. The cells depend on the
  probe only, never on the model, so every model is coarse-grained the same way: the target's
  probability, hence d_B to the truth (eq. 2.2.2 against P*), is exact, and d_B between two
  models can only shrink (the Bhattacharyya coefficient grows under coarse-graining).
- **projection**: each sample's probabilities go through a fixed random (V, k) row-stochastic
  matrix (the thesis' random column-stochastic matrix), ``q = p @ M``; d_B can only shrink too.

Progress (eq. 2.2.4), the distances to ignorance and truth, the error and the cross-entropy of the
FULL distribution are exact from per-sample sufficient statistics taken in the same pass
(:class:`TokenStatistics`): from ``Σ_{c≠y} sqrt(p_c)``, ``p[y_n]`` and the spread of the wrong
classes, each sample's place in the ignorance/truth plane and its distance from it are known,
and nothing else enters.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_manifold.functional.progress import GeodesicProjection, _rotation, _solve

__all__ = [
    "TokenStatistics",
    "frequent_tokens",
    "geodesic_projection_from_statistics",
    "partition_cells",
    "reduce_vocabulary",
    "statistics_metrics",
    "token_targets",
]

#: Vocabulary columns read per chunk (times the number of samples in a batch).
DEFAULT_CHUNK = 4096


class TokenStatistics(NamedTuple):
    """Per-sample sufficient statistics of the full-vocabulary predictions, all (n,) float64.

    Attributes:
        target_log_prob: ``log p[y_n]``.
        log_overlap: ``log Σ_c sqrt(p_c)``, so that the Bhattacharyya coefficient with
            ignorance is ``exp(log_overlap) / sqrt(V)``.
        correct: 1.0 where the arg-max token is the target (first maximum on ties), else 0.0.
        wrong_overlap: ``Σ_{c≠y} sqrt(p_c)``, summed without the target's term.
        wrong_spread: ``Σ_{c≠y} (sqrt(p_c) - mean_{c'≠y} sqrt(p_c'))²``, the squared distance of
            the sample from the ignorance/truth plane (the width of its cusp in the progress
            objective), merged chunk by chunk without cancellation.
    """

    target_log_prob: Tensor
    log_overlap: Tensor
    correct: Tensor
    wrong_overlap: Tensor
    wrong_spread: Tensor


def token_targets(
    labels: Tensor,
    attention_mask: Tensor | None = None,
    *,
    ignore_index: int = -100,
    shift: bool = True,
) -> tuple[Tensor, Tensor]:
    """Which logits rows are probe samples, and their target tokens.

    With ``shift`` (causal language models) the logits at position t predict the label at
    t + 1, so position t of sequence b counts when ``labels[b, t + 1]`` is not ``ignore_index``
    and, if a mask is given, ``attention_mask[b, t + 1]`` is set; the last position never
    counts. Without ``shift`` the labels are already aligned with the logits.

    Args:
        labels: (B, T) integer targets, ``ignore_index`` where nothing is predicted.
        attention_mask: optional (B, T), 0 on padding.
        ignore_index: label value of positions that are not counted.
        shift: next-token targets (see above).

    Returns:
        ``(rows, targets)``: (n,) int64 indices into the (B * T) rows of the flattened (B, T, V)
        logits, in sequence-major order, and (n,) int64 targets.

    Raises:
        ValueError: labels not 2-D integer, a mask of another shape, negative targets that are
            not ``ignore_index``.
    """
    if not isinstance(labels, Tensor) or labels.ndim != 2:
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"`labels` must be a (B, T) integer tensor, got {got}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"`labels` must have an integer dtype, got {labels.dtype}")
    B, T = labels.shape
    target = labels.to(torch.int64)
    counted = target != ignore_index
    if attention_mask is not None:
        if tuple(attention_mask.shape) != (B, T):
            raise ValueError(
                f"`attention_mask` must have the shape of `labels` ({B}, {T}), "
                f"got {tuple(attention_mask.shape)}"
            )
        counted &= attention_mask.to(device=labels.device) != 0
    if shift:
        keep = torch.zeros_like(counted)
        keep[:, :-1] = counted[:, 1:]
        shifted = torch.zeros_like(target)
        shifted[:, :-1] = target[:, 1:]
        counted, target = keep, shifted
    rows = counted.reshape(-1).nonzero().squeeze(-1)
    targets = target.reshape(-1)[rows]
    if targets.numel() and int(targets.min()) < 0:
        raise ValueError(
            f"`labels` must be token ids >= 0 or `ignore_index` = {ignore_index}, "
            f"got {int(targets.min())}"
        )
    return rows, targets


def frequent_tokens(targets: Tensor, vocab_size: int, k: int) -> Tensor:
    """The k + 1 tokens most frequent among ``targets`` (ties: smaller id first), (k + 1,) int64.

    Tokens that never occur fill the list in id order when fewer than k + 1 distinct ones occur.
    """
    counts = torch.bincount(targets.to(torch.int64), minlength=vocab_size).to(torch.float64)
    # A stable order: by count descending, then id ascending.
    order = torch.argsort(-counts, stable=True)
    return order[: k + 1]


def partition_cells(targets: Tensor, frequent: Tensor) -> Tensor:
    """The fixed cells of the "top-k + rest" reduction, (n, k + 1) token ids per sample.

    Column 0 is the sample's target; columns 1..k are the probe's k most frequent tokens, with
    the (k + 1)-th taking the place of the target when the target is among the first k. The cells
    of a sample are distinct and never depend on the model.

    Args:
        targets: (n,) int64 target tokens.
        frequent: (k + 1,) int64 from :func:`frequent_tokens`.
    """
    k = frequent.numel() - 1
    first = frequent[:k].to(targets.device)
    hit = first[None, :] == targets[:, None]  # (n, k): at most one True per row
    cells = first.expand(targets.numel(), k).clone()
    cells[hit] = frequent[k].to(targets.device)
    return torch.cat([targets[:, None], cells], dim=1)


def reduce_vocabulary(
    logits: Tensor,
    targets: Tensor,
    *,
    cells: Tensor | None = None,
    projection: Tensor | None = None,
    dtype: torch.dtype = torch.float64,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[Tensor | None, TokenStatistics]:
    """Reduce (n, V) logits to K columns and exact statistics, in one chunked pass over V.

    The logits may be a non-contiguous view or any float dtype (bf16 included); each chunk of
    ``chunk`` vocabulary columns is upcast to ``dtype`` alone, so at most (n, chunk) values of
    ``dtype`` exist at a time besides the outputs.

    Args:
        logits: (n, V) logits of n probe samples.
        targets: (n,) int64 targets in [0, V).
        cells: (n, k + 1) token ids from :func:`partition_cells`: return the "top-k + rest"
            log-probabilities, (n, k + 2) columns ``[target, cells 1..k, rest]``.
        projection: (V, k) row-stochastic matrix: return ``log(p @ M)``, (n, k).
        dtype: float32 or float64 for the arithmetic and the reduced output.
        chunk: vocabulary columns per chunk.

    Returns:
        ``(reduced, statistics)``; ``reduced`` is ``None`` when neither ``cells`` nor
        ``projection`` is given.
    """
    if logits.ndim != 2:
        raise ValueError(f"`logits` must be (n, V), got shape {tuple(logits.shape)}")
    if cells is not None and projection is not None:
        raise ValueError("give at most one of `cells` and `projection`")
    n, V = logits.shape
    kw = {"dtype": dtype, "device": logits.device}
    neg_inf = torch.full((n,), -math.inf, **kw)
    run_max = neg_inf.clone()  # running maximum of the logits
    run_sum = torch.zeros(n, **kw)  # Σ exp(x - run_max)
    run_sqrt = torch.zeros(n, **kw)  # Σ exp((x - run_max) / 2)
    best = neg_inf.clone()
    best_id = torch.zeros(n, dtype=torch.int64, device=logits.device)
    rest_max, rest_sum = neg_inf.clone(), torch.zeros(n, **kw)
    proj = None if projection is None else torch.zeros(n, projection.shape[1], **kw)
    rows = torch.arange(n, device=logits.device)
    targets_d = targets.to(logits.device)
    w_count, w_mean, w_m2 = torch.zeros(n, **kw), torch.zeros(n, **kw), torch.zeros(n, **kw)
    for j0 in range(0, V, chunk):
        x = logits[:, j0 : j0 + chunk].to(dtype, copy=True)  # (n, w), masked in place below
        c_max, c_arg = x.max(dim=1)
        better = c_max > best  # strict: the first maximum wins, as in argmax
        best = torch.where(better, c_max, best)
        best_id = torch.where(better, c_arg + j0, best_id)
        new_max = torch.maximum(run_max, c_max)
        safe = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        half_scale = torch.exp(0.5 * (run_max - safe))  # rescales sums under the old maximum
        # sqrt(p) up to a factor first; p = its square (one exponential per value, not two)
        e = torch.sub(x, safe[:, None]).mul_(0.5).exp_()
        run_sqrt = run_sqrt * half_scale + e.sum(1)
        # Mean and squared deviations of sqrt(p) over the wrong classes: this chunk's, then
        # merged with the running ones (Chan et al.), the target's entry set to the chunk mean.
        w = x.shape[1]
        hit = (targets_d >= j0) & (targets_d < j0 + w)
        col = (targets_d - j0).clamp_(0, w - 1)[:, None]
        count_c = w - hit.to(dtype)
        e_col = e.gather(1, col)[:, 0]
        u = e.scatter(1, col, torch.where(hit, 0, e_col)[:, None])  # the target left out
        mean_c = u.sum(1) / count_c
        u.scatter_(1, col, torch.where(hit, mean_c, e_col)[:, None])
        m2_c = u.sub_(mean_c[:, None]).square_().sum(1)
        w_mean, w_m2 = w_mean * half_scale, w_m2 * half_scale.square()
        total = w_count + count_c
        delta = mean_c - w_mean
        w_mean = w_mean + delta * (count_c / total)
        w_m2 = w_m2 + m2_c + delta.square() * (w_count * count_c / total)
        w_count = total
        e.square_()
        scale = half_scale.square_()
        run_sum = run_sum * scale + e.sum(1)
        if proj is not None:
            proj.mul_(scale[:, None]).addmm_(e, projection[j0 : j0 + chunk].to(dtype))
        run_max = new_max
        if cells is not None:  # the rest: the same sums with the cells' columns masked out
            inside = (cells >= j0) & (cells < j0 + x.shape[1])
            if bool(inside.any()):
                r, col = rows[:, None].expand_as(cells)[inside], (cells - j0)[inside]
                x[r, col] = -math.inf
            r_max = torch.maximum(rest_max, x.max(dim=1).values)
            r_safe = torch.where(torch.isfinite(r_max), r_max, torch.zeros_like(r_max))
            x.sub_(r_safe[:, None]).exp_()
            rest_sum = rest_sum * torch.exp(rest_max - r_safe) + x.sum(1)
            rest_max = r_max
    log_norm = run_max + torch.log(run_sum)  # log-sum-exp of each row
    target_logit = logits.gather(1, targets[:, None].to(logits.device)).squeeze(1).to(dtype)
    half_norm = torch.exp(0.5 * (run_max - log_norm))  # sqrt(p) = e * half_norm
    stats = TokenStatistics(
        target_log_prob=(target_logit - log_norm).double(),
        log_overlap=(0.5 * (run_max - log_norm) + torch.log(run_sqrt)).double(),
        correct=(best_id == targets).double(),
        wrong_overlap=(w_count * w_mean * half_norm).double(),
        wrong_spread=(w_m2 * half_norm.square()).double(),
    )
    if cells is not None:
        kept = logits.gather(1, cells.to(logits.device)).to(dtype) - log_norm[:, None]
        rest = rest_max + torch.log(rest_sum) - log_norm
        return torch.cat([kept, rest[:, None]], dim=1), stats
    if proj is not None:
        return torch.log(proj) - torch.log(run_sum)[:, None], stats
    return None, stats


def geodesic_projection_from_statistics(
    stats: TokenStatistics, num_classes: int
) -> GeodesicProjection:
    """Progress (eq. 2.2.4) and distance to the geodesic from per-sample statistics.

    Each sample enters the progress objective only through its place in the ignorance/truth
    plane and its distance from it: with ``b = sqrt(p[y])`` and ``S = Σ_{c≠y} sqrt(p_c)``,
    ``x = (S + b) cos θ`` (the Bhattacharyya coefficient with ignorance), ``y = (b - x cos θ) /
    sin θ`` and the squared distance from the plane ``q = Σ_{c≠y} (sqrt(p_c) - S / (C - 1))²``,
    ``θ = arccos(1 / sqrt(C))`` — the same coordinates as for an (N, C) probe, taken from
    :func:`reduce_vocabulary`'s statistics instead of the (N, V) probabilities.

    Args:
        stats: (N,) statistics of every sample.
        num_classes: C, the size of the full vocabulary.

    Returns:
        :class:`GeodesicProjection` of 0-dim float64 tensors.
    """
    C = int(num_classes)
    if C < 2:
        raise ValueError(f"`num_classes` must be >= 2, got {num_classes!r}")
    b = (0.5 * stats.target_log_prob).exp()
    cos_t, sin_t = 1 / math.sqrt(C), math.sqrt(1 - 1 / C)
    theta = math.acos(cos_t)
    x = (stats.wrong_overlap + b) * cos_t
    xy = torch.stack([x, (b - x * cos_t) / sin_t])[None]  # (1, 2, N)
    q = stats.wrong_spread.clamp(min=torch.finfo(torch.float64).tiny)[None]
    t = _solve(xy, q, None, theta)
    rc = torch.bmm(_rotation(t, math.pi / 2), xy).squeeze(1)  # R cos(t - φ)
    distance = rc.clamp_(-1, 1).arccos_().mean()
    return GeodesicProjection((t / theta)[0], distance)


def statistics_metrics(stats: TokenStatistics, num_classes: int) -> dict[str, Tensor]:
    """The probe scalars of the full distribution from :class:`TokenStatistics`.

    Returns 0-dim float64 tensors keyed ``progress``, ``distance_to_ignorance``,
    ``distance_to_truth``, ``distance_to_geodesic``, ``error``, ``cross_entropy`` (the same
    names and definitions as for a (N, C) probe: eq. 2.2.4, 2.2.2 against P0 and P*).
    """
    C = int(num_classes)
    log_a = stats.log_overlap - 0.5 * math.log(C)  # log of the coefficient with ignorance
    projection = geodesic_projection_from_statistics(stats, C)
    return {
        "progress": projection.progress,
        "distance_to_ignorance": -log_a.mean(),
        "distance_to_truth": -0.5 * stats.target_log_prob.mean(),
        "distance_to_geodesic": projection.distance,
        "error": 1 - stats.correct.mean(),
        "cross_entropy": -stats.target_log_prob.mean(),
    }
