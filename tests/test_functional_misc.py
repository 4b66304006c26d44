"""Centroids (thesis Table 2.3), random class projection (§3.5.2) and Procrustes alignment (§2.4),
against plain references: per-sample formulas, scipy's Lambert W, a BFGS minimisation on the
simplex for the Bhattacharyya centroid, and an SVD Kabsch."""

from __future__ import annotations

import math

import _reference as R
import numpy as np
import pytest
import torch

from lightning_manifold import functional as F

CLOSED_FORM = ["arithmetic", "geometric", "harmonic", "sqrt_arithmetic", "jeffreys"]


def ensemble(seed: int = 0, m: int = 5, N: int = 12, C: int = 4) -> np.ndarray:
    """(m, N, C) strictly positive probabilities, some confident."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, N)
    return R.softmax(R.trained_logits(rng, y, C, np.linspace(0.5, 5.0, m), noise=1.5))


# ----------------------------------------------------------------------------- centroids


def test_centroid_kinds_listed():
    assert set(F.CENTROIDS) == {*CLOSED_FORM, "bhattacharyya"}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", CLOSED_FORM)
def test_closed_form_centroids_match_reference(kind, dtype):
    P = torch.from_numpy(ensemble(1)).to(dtype)
    out = F.centroid(P, kind)
    assert out.shape == P.shape[1:]
    assert out.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(R.as_np(out), R.centroid(P, kind), rtol=0, atol=tol)
    np.testing.assert_allclose(R.as_np(out.sum(-1)), 1.0, rtol=0, atol=tol)


def test_centroids_differ_from_each_other():
    P = ensemble(2)
    outs = {k: R.as_np(F.centroid(P, k)) for k in F.CENTROIDS}
    for a in outs:
        for b in outs:
            if a < b:
                assert np.abs(outs[a] - outs[b]).max() > 1e-4, (a, b)


def test_bhattacharyya_centroid_minimises_summed_distance():
    P = ensemble(3)
    out = F.centroid(P, "bhattacharyya")
    ref = R.centroid(P, "bhattacharyya")
    np.testing.assert_allclose(R.as_np(out), ref, rtol=0, atol=1e-7)
    np.testing.assert_allclose(R.as_np(out.sum(-1)), 1.0, rtol=0, atol=1e-12)
    lib_obj = R.bhattacharyya_centroid_objective(P, out)
    ref_obj = R.bhattacharyya_centroid_objective(P, ref)
    assert lib_obj <= ref_obj + 1e-12
    # and it is the minimiser among the other averages
    for kind in CLOSED_FORM:
        assert lib_obj < R.bhattacharyya_centroid_objective(P, F.centroid(P, kind))


@pytest.mark.parametrize("case", ["one-hot", "logit scale 30"])
def test_bhattacharyya_centroid_of_confident_models(case):
    if case == "one-hot":
        # Σ_i d_B(e_{c_i}, q) = -1/2 Σ_i log q_{c_i}: minimised by the class frequencies.
        cls = np.array([[3, 3, 3, 1, 3], [0, 2, 2, 1, 2], [0, 1, 2, 3, 0]]).T  # (m=5, N=3)
        P = np.eye(4)[cls]
        expected = np.stack([np.bincount(cls[:, n], minlength=4) / 5 for n in range(3)])
        assert np.abs(R.centroid(P, "bhattacharyya") - expected).max() <= 1e-6  # reference
    else:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 4, 12)
        P = R.softmax(R.confident_logits(rng, y, 4, 5, 30.0, 0.4))
        expected = R.centroid(P, "bhattacharyya")
    out = F.centroid(P, "bhattacharyya")
    np.testing.assert_allclose(R.as_np(out), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["arithmetic", "sqrt_arithmetic", "bhattacharyya"])
def test_centroids_allowing_zeros(kind):
    P = ensemble(4)
    P[0, 0] = [1.0, 0.0, 0.0, 0.0]
    P[1, 0] = [0.0, 1.0, 0.0, 0.0]
    out = F.centroid(P, kind)
    assert bool(torch.isfinite(out).all())
    np.testing.assert_allclose(R.as_np(out), R.centroid(P, kind), rtol=0, atol=1e-7)


@pytest.mark.parametrize("kind", sorted(F.CENTROIDS))
def test_centroid_of_identical_models_is_that_model(kind):
    one = ensemble(5)[2]
    out = F.centroid(np.stack([one, one, one]), kind)
    np.testing.assert_allclose(R.as_np(out), one, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["geometric", "harmonic", "jeffreys"])
def test_centroids_needing_positive_probabilities_refuse_zeros(kind):
    P = ensemble(6)
    P[0, 0] = [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="`P`"):
        F.centroid(P, kind)


def test_centroid_bad_input():
    with pytest.raises(ValueError, match="`kind`"):
        F.centroid(ensemble(7), "median")
    bad = ensemble(7)
    bad[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="`P`"):
        F.centroid(bad, "arithmetic")
    with pytest.raises(ValueError, match="`P`"):
        F.centroid(ensemble(7) * 2, "arithmetic")


# ----------------------------------------------------------------------------- class projection


def test_random_column_stochastic_matrix():
    g = torch.Generator().manual_seed(0)
    M = F.random_column_stochastic(50, 7, generator=g)
    assert M.shape == (50, 7)
    assert M.dtype == torch.float64
    assert bool((M >= 0).all())
    np.testing.assert_allclose(R.as_np(M.sum(1)), 1.0, rtol=0, atol=1e-12)
    again = F.random_column_stochastic(50, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(M, again)
    other = F.random_column_stochastic(50, 7, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(M, other)
    assert F.random_column_stochastic(5, 2, dtype=torch.float32).dtype == torch.float32


def test_random_column_stochastic_leaves_global_rng_alone_with_a_generator():
    before = torch.get_rng_state()
    F.random_column_stochastic(10, 3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("k", [1, 11, 0])
def test_random_column_stochastic_bad_k(k):
    with pytest.raises(ValueError, match="`k`"):
        F.random_column_stochastic(10, k)


def test_project_classes_matches_loop_and_shrinks_distances():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 20, 15)
    P = R.softmax(R.trained_logits(rng, y, 20, np.linspace(0, 6, 6), noise=1.0))  # (6, 15, 20)
    M = F.random_column_stochastic(20, 4, generator=torch.Generator().manual_seed(3))
    out = F.project_classes(P, M)
    assert out.shape == (6, 15, 4)
    Mn = R.as_np(M)
    ref = np.zeros((6, 15, 4))
    for i in range(6):
        for n in range(15):
            for j in range(4):
                ref[i, n, j] = sum(P[i, n, c] * Mn[c, j] for c in range(20))
    np.testing.assert_allclose(R.as_np(out), ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(R.as_np(out.sum(-1)), 1.0, rtol=0, atol=1e-12)
    assert F.project_classes(P[0], M).shape == (15, 4)
    # a stochastic map can only bring models closer (data processing inequality)
    before, after = R.bhattacharyya(P), R.as_np(F.bhattacharyya(out))
    assert (after <= before + 1e-12).all()
    assert (after < before - 1e-6)[~np.eye(6, dtype=bool)].all()
    # the identity map changes nothing
    same = F.project_classes(P, torch.eye(20, dtype=torch.float64))
    np.testing.assert_allclose(R.as_np(same), P, rtol=0, atol=0)


def test_project_classes_bad_input():
    P = ensemble(9)  # C = 4
    with pytest.raises(ValueError, match="`M`"):
        F.project_classes(P, np.full((5, 2), 0.5))
    with pytest.raises(ValueError, match="`M`"):
        F.project_classes(P, np.full((4, 2), 0.7))
    with pytest.raises(ValueError, match="`M`"):
        F.project_classes(P, np.array([[1.5, -0.5]] * 4))
    with pytest.raises(ValueError, match="`P`"):
        F.project_classes(P[..., :3], np.full((3, 2), 0.5))


# ----------------------------------------------------------------------------- alignment


def _orthogonal(k: int, seed: int) -> np.ndarray:
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((k, k)))
    return Q


def test_procrustes_recovers_a_moved_copy():
    rng = np.random.default_rng(10)
    X = rng.standard_normal((20, 3))
    R0 = _orthogonal(3, 11) @ np.diag([1.0, -1.0, 1.0])  # a rotation with a reflection
    target = X @ R0 + np.array([0.5, -2.0, 3.0])
    res = F.procrustes_align(X, target)
    np.testing.assert_allclose(R.as_np(res.aligned), target, rtol=0, atol=1e-10)
    np.testing.assert_allclose(R.as_np(res.rotation), R0, rtol=0, atol=1e-10)
    assert float(res.rmsd) <= 1e-10
    Rm = R.as_np(res.rotation)
    np.testing.assert_allclose(Rm @ Rm.T, np.eye(3), atol=1e-12)


def test_procrustes_matches_svd_reference_on_noisy_points():
    rng = np.random.default_rng(12)
    X = rng.standard_normal((25, 4))
    target = X @ _orthogonal(4, 13) + 0.1 * rng.standard_normal((25, 4)) + 1.0
    res = F.procrustes_align(torch.from_numpy(X), torch.from_numpy(target))
    moved, Rref, rmsd = R.kabsch(X, target)
    np.testing.assert_allclose(R.as_np(res.aligned), moved, rtol=0, atol=1e-10)
    np.testing.assert_allclose(R.as_np(res.rotation), Rref, rtol=0, atol=1e-10)
    assert float(res.rmsd) == pytest.approx(rmsd, rel=1e-10)
    assert rmsd > 0.05


def test_procrustes_with_signature_aligns_space_and_time_axes_separately():
    rng = np.random.default_rng(14)
    X = rng.standard_normal((30, 4))
    signs = np.array([1.0, -1.0, 1.0, -1.0])
    target = X @ _orthogonal(4, 15) + 0.05 * rng.standard_normal((30, 4))
    res = F.procrustes_align(X, target, signs=signs)
    Rm = R.as_np(res.rotation)
    space, time = signs > 0, signs < 0
    assert np.abs(Rm[np.ix_(space, time)]).max() == 0
    assert np.abs(Rm[np.ix_(time, space)]).max() == 0
    out = R.as_np(res.aligned)
    for group in (space, time):
        moved, Rg, _ = R.kabsch(X[:, group], target[:, group])
        np.testing.assert_allclose(out[:, group], moved, rtol=0, atol=1e-10)
        np.testing.assert_allclose(Rm[np.ix_(group, group)], Rg, rtol=0, atol=1e-10)
    # mixing space and time would have fitted better: the constraint is real
    assert float(F.procrustes_align(X, target).rmsd) < float(res.rmsd) - 1e-3


def test_procrustes_bad_input():
    X = np.zeros((5, 3))
    with pytest.raises(ValueError, match="`target`"):
        F.procrustes_align(X, np.zeros((5, 2)))
    with pytest.raises(ValueError, match="`X`"):
        F.procrustes_align(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="`signs`"):
        F.procrustes_align(X, X, signs=np.ones(2))
