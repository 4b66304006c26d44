"""Bad input to the functional core: a clear error that names the argument (issue 11, item 3).

Each case calls one public function of ``lightning_manifold.functional`` with one bad
argument and asserts the exception type and that the message names that argument (and, where
the expected form is short, what was expected or what was given).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_manifold import functional as F

N, C = 6, 3
_g = torch.Generator().manual_seed(0)
P = torch.softmax(torch.randn(2, N, C, generator=_g, dtype=torch.float64), -1)
L = P.log()
Y = torch.tensor([0, 1, 2, 0, 1, 2])
D = F.bhattacharyya(torch.softmax(torch.randn(4, N, C, generator=_g, dtype=torch.float64), -1))


def _with(x: torch.Tensor, index: tuple, value: float) -> torch.Tensor:
    x = x.clone()
    x[index] = value
    return x


def _negative_distances() -> torch.Tensor:
    bad = D.clone()
    bad[0, 1] = bad[1, 0] = -0.1
    return bad


CASES = [
    # ignorance / truth / geodesics: integer counts, floating dtypes, devices
    ("ignorance int dtype", lambda: F.ignorance(5, 3, dtype=torch.int64), r"`dtype`.*floating"),
    ("ignorance bool dtype", lambda: F.ignorance(5, 3, dtype=torch.bool), r"`dtype`.*floating"),
    ("ignorance C float", lambda: F.ignorance(5, 3.5), r"`num_classes`.*integer.*3\.5"),
    ("ignorance C=1", lambda: F.ignorance(5, 1), r"`num_classes`.*>= 2.*got 1"),
    ("ignorance N=0", lambda: F.ignorance(0, 3), r"`num_samples`.*>= 1.*got 0"),
    ("ignorance N str", lambda: F.ignorance("5", 3), r"`num_samples`.*integer"),
    ("ignorance bad device", lambda: F.ignorance(5, 3, device="gpu0"), r"`device`.*'gpu0'"),
    ("truth int dtype", lambda: F.truth(Y, 3, dtype=torch.int64), r"`dtype`.*floating"),
    ("truth C float", lambda: F.truth(Y, 2.5), r"`num_classes`.*integer"),
    ("truth label >= C", lambda: F.truth(Y, 2), r"`labels`.*\[0, 2\)"),
    ("truth float labels", lambda: F.truth(Y.double(), 3), r"`labels`.*integer"),
    ("geodesic point NaN alpha", lambda: F.geodesic_point(P[0], P[1], math.nan), r"`alpha`"),
    ("geodesic batch P", lambda: F.geodesic_point(P, P[1], 0.5), r"`P` and `Q`.*\(N, C\)"),
    (
        "ignorance-truth NaN alphas",
        lambda: F.ignorance_truth_geodesic(Y, 3, np.array([0.5, np.nan])),
        r"`alphas`.*finite",
    ),
    (
        "random projection k float",
        lambda: F.random_column_stochastic(5, 2.5),
        r"`k`.*integer",
    ),
    (
        "random projection int dtype",
        lambda: F.random_column_stochastic(5, 2, dtype=torch.int32),
        r"`dtype`.*floating",
    ),
    # distances: dtype, rank, N/C mismatch, values
    ("d_B int P", lambda: F.bhattacharyya(torch.ones(2, N, C, dtype=torch.int64)), r"`P`.*float"),
    ("d_B 4-D P", lambda: F.bhattacharyya(P[None]), r"`P`.*\(m, N, C\).*4-D"),
    ("d_B 1-D P", lambda: F.bhattacharyya(P[0, 0]), r"`P`.*1-D"),
    ("d_B empty P", lambda: F.bhattacharyya(P[:, :0]), r"`P`.*empty"),
    ("d_B NaN P", lambda: F.bhattacharyya(_with(P, (0, 0, 0), math.nan)), r"`P`.*NaN"),
    ("d_B negative P", lambda: F.bhattacharyya(_with(P, (0, 0, 0), -0.5)), r"`P`.*non-negative"),
    ("d_B unnormalised P", lambda: F.bhattacharyya(2 * P), r"`P`.*sum to 1"),
    ("d_B list P", lambda: F.bhattacharyya(P.tolist()), r"`P`.*Tensor"),
    ("d_B N mismatch", lambda: F.bhattacharyya(P, P[:, :4]), r"`Q`.*\(N, C\)"),
    (
        "d_B C mismatch",
        lambda: F.bhattacharyya(P, P[..., :2] / P[..., :2].sum(-1, keepdim=True)),
        r"`Q`.*\(N, C\)",
    ),
    (
        "d_B sqrt int S",
        lambda: F.bhattacharyya_from_sqrt(torch.ones(2, N, C, dtype=torch.int32)),
        r"`S`",
    ),
    (
        "d_B log +inf",
        lambda: F.bhattacharyya_from_log_probs(_with(L, (0, 1, 1), math.inf)),
        r"`log_P`",
    ),
    ("d_G C mismatch", lambda: F.geodesic_distance(P, torch.full((N, 4), 0.25)), r"`Q`.*\(N, C\)"),
    ("sKL NaN Q", lambda: F.symmetric_kl(P, _with(P, (1, 2, 0), math.nan)), r"`Q`.*NaN"),
    ("sKL log N mismatch", lambda: F.symmetric_kl_from_log_probs(L, L[:, :3]), r"`log_Q`"),
    (
        "to ignorance NaN",
        lambda: F.distance_to_ignorance_from_log_probs(_with(L, (0, 0, 0), math.nan)),
        r"`log_P`",
    ),
    ("to truth 2-D labels", lambda: F.distance_to_truth(P, Y[None]), r"`labels`.*\(N,\)"),
    (
        "to truth labels range",
        lambda: F.distance_to_truth_from_log_probs(L, Y + 1),
        r"`labels`.*\[0, 3\)",
    ),
    # progress: labels, values, weights
    ("progress negative label", lambda: F.progress(P, _with(Y, (0,), -1)), r"`labels`.*\[0, 3\)"),
    ("progress float labels", lambda: F.progress(P, Y.float()), r"`labels`.*integer"),
    ("progress bool labels", lambda: F.progress(P, Y > 0), r"`labels`.*integer"),
    ("progress labels length", lambda: F.progress(P, Y[:4]), r"`labels`.*\(6,\)"),
    (
        "progress NaN",
        lambda: F.progress_from_log_probs(_with(L, (1, 2, 0), math.nan), Y),
        r"`log_P`",
    ),
    ("progress unnormalised", lambda: F.progress(0.5 * P, Y), r"`P`.*sum to 1"),
    ("progress negative P", lambda: F.progress(_with(P, (0, 0, 1), -0.1), Y), r"`P`.*non-negative"),
    (
        "projection negative weights",
        lambda: F.geodesic_projection(P, Y, weights=-np.ones(N)),
        r"`weights`",
    ),
    (
        "projection weights shape",
        lambda: F.geodesic_projection(P, Y, weights=np.ones(N + 1)),
        r"`weights`.*\(6,\)",
    ),
    ("per-class labels range", lambda: F.per_class_progress_from_log_probs(L, Y + 3), r"`labels`"),
    # InPCA and its helpers
    (
        "inpca negative distances",
        lambda: F.inpca(_negative_distances()),
        r"`D`.*non-negative.*-0\.1",
    ),
    ("inpca NaN", lambda: F.inpca(_with(D, (0, 1), math.nan)), r"`D`.*finite"),
    ("inpca not square", lambda: F.inpca(D[:3]), r"`D`.*square"),
    ("inpca asymmetric", lambda: F.inpca(_with(D, (0, 1), 5.0)), r"`D`.*symmetric"),
    ("inpca int D", lambda: F.inpca(torch.ones(3, 3, dtype=torch.int64)), r"`D`.*float"),
    ("inpca components float", lambda: F.inpca(D, n_components=2.5), r"`n_components`"),
    ("inpca components 0", lambda: F.inpca(D, n_components=0), r"`n_components`.*\[1, 4\]"),
    ("inpca weights shape", lambda: F.inpca(D, weights=np.ones(3)), r"`weights`.*\(4,\)"),
    ("explained stress k", lambda: F.explained_stress(torch.ones(3), 4), r"`k`.*\[0, 3\]"),
    (
        "minkowski signs",
        lambda: F.minkowski_sq_distance(torch.ones(3, 2), signs=torch.ones(3)),
        r"`signs`",
    ),
    ("centroid kind", lambda: F.centroid(P, kind="median"), r"`kind`.*'median'"),
    ("project classes M", lambda: F.project_classes(P, torch.ones(4, 2) / 2), r"`M`.*\(C, k\)"),
    (
        "procrustes shapes",
        lambda: F.procrustes_align(torch.ones(3, 2), torch.ones(4, 2)),
        r"`target`",
    ),
]


@pytest.mark.parametrize(("call", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_naming_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match) as info:
        call()
    # a clear error of ours, not a raw torch/numpy one: the message quotes the argument
    assert "`" in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_names_the_device():
    with pytest.raises(ValueError, match=r"`device`.*'cuda'"):
        F.ignorance(5, 3, device="cuda")
    with pytest.raises(ValueError, match=r"`device`.*'cuda'"):
        F.random_column_stochastic(5, 2, device="cuda")


def test_distance_round_off_below_zero_is_accepted():
    # a distance matrix computed elsewhere may hold -1e-17 where two models coincide
    tiny = D.clone()
    tiny[0, 1] = tiny[1, 0] = -1e-17
    res = F.inpca(tiny)
    assert res.coords.shape == (4, 4)
    assert bool(torch.isfinite(res.coords).all())


def test_integer_counts_from_numpy_are_accepted():
    P0 = F.ignorance(np.int64(5), np.int32(3), dtype=torch.float32)
    assert P0.shape == (5, 3)
    assert P0.dtype == torch.float32
    assert bool((torch.tensor(1 / 3, dtype=torch.float32) == P0).all())
