"""InPCA, explained stress, Minkowski distances and projection (thesis eqs. 2.2.6-2.2.9, 2.4.2,
§2.5.3.2).

The reference is a plain numpy ``eigh`` of ``-L D L / 2`` sorted by |λ| (``_reference.inpca``),
loops for eqs. 2.2.7, 2.2.8, 2.2.9 and 2.4.2, and a textbook classical MDS.
Eigenvalues are compared relative to the largest |λ| (1e-8); coordinates relative to the
largest |coordinate| (1e-8).
"""

from __future__ import annotations

import math

import _reference as R
import numpy as np
import pytest
import torch

from lightning_manifold import functional as F

EIG_TOL = 1e-8


def model_distances(m: int = 40, seed: int = 0, N: int = 50, C: int = 5) -> np.ndarray:
    """A Bhattacharyya matrix of a realistic cloud: three runs from ignorance to near the truth
    plus a few scattered models. Runs near the truth give time-like axes (checked where that
    matters)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, N)
    k = (m - 4) // 3
    lg = [R.trained_logits(rng, y, C, np.linspace(0, 15, k), noise=1 + 0.5 * r) for r in range(3)]
    lg.append(R.random_logits(rng, m - 3 * k, N, C, 2.0))
    return R.bhattacharyya_dense(R.softmax(np.concatenate(lg))) * (1 - np.eye(m))


@pytest.fixture(scope="module")
def D() -> np.ndarray:
    return model_distances()


def rel(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = R.as_np(a), R.as_np(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_fixture_has_space_and_time_like_axes(D):
    lam, _ = R.eigh_by_magnitude(R.centred(D))
    assert (lam[:3] > 0).any()
    assert (lam[:3] < 0).any()


@pytest.mark.parametrize("input_dtype", [np.float64, np.float32])
def test_inpca_matches_reference_eigh(D, input_dtype):
    Din = D.astype(input_dtype)
    ref_coords, ref_lam, ref_U = R.inpca(Din)
    res = F.inpca(Din)
    m = D.shape[0]
    assert res.coords.shape == res.eigenvectors.shape == (m, m)
    assert res.eigenvalues.shape == (m,)
    assert rel(res.eigenvalues, ref_lam) <= EIG_TOL
    # all but the null (centring) axis, whose eigenvector is arbitrary
    assert rel(res.eigenvectors[:, : m - 1], ref_U[:, : m - 1]) <= EIG_TOL
    assert rel(res.coords[:, : m - 1], ref_coords[:, : m - 1]) <= EIG_TOL
    lam = R.as_np(res.eigenvalues)
    assert (np.diff(np.abs(lam)) <= 0).all()
    assert np.array_equal(res.time_like.numpy(), lam < 0)
    assert np.array_equal(F.time_like(res.eigenvalues).numpy(), lam < 0)
    assert np.array_equal(R.as_np(res.signs), np.where(lam < 0, -1.0, 1.0))
    W = R.centred(Din.astype(np.float64))
    np.testing.assert_allclose(R.as_np(res.row_means), Din.astype(np.float64).mean(1), rtol=1e-12)
    assert float(res.grand_mean) == pytest.approx(Din.astype(np.float64).mean(), rel=1e-12)
    assert float(res.total_stress) == pytest.approx(np.sum(W**2), rel=1e-10)
    assert float(res.total_stress) == pytest.approx(np.sum(ref_lam**2), rel=1e-10)
    assert res.weights is None


def test_inpca_truncated_equals_leading_part_of_full(D):
    full = F.inpca(D)
    part = F.inpca(D, n_components=7)
    assert part.coords.shape == (D.shape[0], 7)
    assert rel(part.eigenvalues, full.eigenvalues[:7]) <= EIG_TOL
    assert rel(part.coords, full.coords[:, :7]) <= EIG_TOL
    assert float(part.total_stress) == pytest.approx(float(full.total_stress), rel=1e-12)


def test_isometry_on_full_embedding(D):
    res = F.inpca(D)
    E = F.minkowski_sq_distance(res.coords, signs=res.signs)
    assert np.abs(R.as_np(E) - D).max() <= 1e-10 * D.max()
    X, s = R.as_np(res.coords), R.as_np(res.signs)
    assert np.abs(R.minkowski_sq(X, X, s) - D).max() <= 1e-10 * D.max()
    # and the Euclidean norm would not do: the time-like axes matter
    assert np.abs(R.minkowski_sq(X, X, np.ones_like(s)) - D).max() > 1e-3 * D.max()


def test_minkowski_sq_distance_matches_loops():
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((7, 4)), rng.standard_normal((5, 4))
    s = np.array([1.0, -1.0, 1.0, -1.0])
    out = F.minkowski_sq_distance(X, Y, signs=s)
    assert out.shape == (7, 5)
    np.testing.assert_allclose(R.as_np(out), R.minkowski_sq(X, Y, s), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        R.as_np(F.minkowski_sq_distance(torch.from_numpy(X), signs=torch.from_numpy(s))),
        R.minkowski_sq(X, X, s),
        rtol=1e-12,
        atol=1e-14,
    )
    with pytest.raises(ValueError, match="`signs`"):
        F.minkowski_sq_distance(X, Y, signs=s[:3])
    with pytest.raises(ValueError, match="`Y`"):
        F.minkowski_sq_distance(X, Y[:, :3], signs=s)


def test_explained_stress_matches_eq_2_2_8(D):
    res = F.inpca(D)
    lam = R.as_np(res.eigenvalues)
    # The tail Σ_{k>d} λ² is formed as total - head: near d = m its cancellation leaves
    # ~1e-16 * total, i.e. ~1e-8 after the square root.
    for d in range(0, D.shape[0] + 1, 3):
        assert float(F.explained_stress(res.eigenvalues, d)) == pytest.approx(
            R.explained_stress(lam, d), abs=1e-7
        )
    assert float(F.explained_stress(lam, 0)) == 0.0
    assert float(F.explained_stress(lam, lam.size)) == pytest.approx(1.0, abs=1e-15)
    # leading eigenvalues only + the total from the full decomposition
    part = F.inpca(D, n_components=6)
    for d in range(7):
        assert float(F.explained_stress(part.eigenvalues, d, part.total_stress)) == pytest.approx(
            R.explained_stress(lam, d), abs=1e-10
        )
    # without the total, the truncated spectrum would explain "everything"
    assert float(F.explained_stress(part.eigenvalues, 6)) == pytest.approx(1.0)
    assert R.explained_stress(lam, 6) < 0.99


def test_explained_pairwise_distance_matches_eq_2_4_2(D):
    res = F.inpca(D)
    for k in [1, 3, 8]:
        X, s = R.as_np(res.coords[:, :k]), R.as_np(res.signs[:k])
        got = float(F.explained_pairwise_distance(D, X, s))
        assert got == pytest.approx(R.explained_pairwise_distance(D, X, s), abs=1e-12)
    full = F.explained_pairwise_distance(D, res.coords, res.signs)
    assert float(full) == pytest.approx(1.0, abs=1e-9)


# ----------------------------------------------------------------------------- classical MDS


def test_inpca_equals_classical_mds_for_euclidean_distances():
    rng = np.random.default_rng(2)
    pts = rng.standard_normal((30, 3)) * np.array([3.0, 2.0, 1.0])
    D = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    res = F.inpca(D, n_components=3)
    mds, mds_lam = R.classical_mds(D, 3)
    assert (mds_lam > 0).all()
    assert rel(res.eigenvalues, mds_lam) <= EIG_TOL
    assert not bool(res.time_like.any())
    X = R.as_np(res.coords)
    for k in range(3):  # equal up to the sign of each axis
        sign = np.sign(X[:, k] @ mds[:, k])
        assert np.abs(X[:, k] - sign * mds[:, k]).max() <= 1e-8 * np.abs(mds).max()
    # and both recover the centred points up to an orthogonal map (same Gram matrix)
    Pc = pts - pts.mean(0)
    np.testing.assert_allclose(X @ X.T, Pc @ Pc.T, atol=1e-9 * np.abs(Pc).max() ** 2)
    # the remaining eigenvalues vanish
    rest = R.as_np(F.inpca(D).eigenvalues[3:])
    assert np.abs(rest).max() <= 1e-10 * float(res.eigenvalues[0])


# ----------------------------------------------------------------------------- signs


def test_eigenvector_signs_are_deterministic(D):
    a, b = F.inpca(D, n_components=8), F.inpca(torch.from_numpy(D.copy()), n_components=8)
    assert torch.equal(a.coords, b.coords)
    assert torch.equal(a.eigenvectors, b.eigenvectors)
    U = R.as_np(a.eigenvectors)
    top = U[np.abs(U).argmax(0), np.arange(U.shape[1])]
    assert (top > 0).all()


def test_permuted_models_give_permuted_coordinates(D):
    perm = np.random.default_rng(3).permutation(D.shape[0])
    a = F.inpca(D, n_components=10)
    b = F.inpca(D[perm][:, perm], n_components=10)
    assert rel(b.eigenvalues, a.eigenvalues) <= EIG_TOL
    assert rel(b.coords, R.as_np(a.coords)[perm]) <= EIG_TOL


def _signed_low_rank_distances(m: int, seed: int) -> np.ndarray:
    """Squared Minkowski distances of points with signature (+,-,+,-,+,+) and distinct scales,
    plus a little symmetric noise (full rank, leading eigenvalues of both signs)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, 6)) * np.array([3.0, 2.6, 2.2, 1.8, 1.4, 1.0])
    s = np.array([1.0, -1.0, 1.0, -1.0, 1.0, 1.0])
    D = ((X[:, None] - X[None]) ** 2 * s).sum(-1)
    noise = 0.05 * rng.standard_normal((m, m))
    D = D + noise + noise.T - np.diag(np.diag(noise + noise.T))
    # a constant on every entry leaves the centred matrix unchanged; inpca refuses negatives
    return D - D.min()


def test_partial_eigensolver_matches_dense_reference():
    D = _signed_low_rank_distances(600, seed=4)
    k = 6
    res = F.inpca(D, n_components=k)  # m > 500 and k small: the partial (Lanczos) path
    ref_coords, ref_lam, ref_U = R.inpca(D, k)
    assert (ref_lam > 0).any()
    assert (ref_lam < 0).any()
    assert rel(res.eigenvalues, ref_lam) <= EIG_TOL
    assert np.array_equal(res.time_like.numpy(), ref_lam < 0)
    assert rel(res.eigenvectors, ref_U) <= EIG_TOL
    assert rel(res.coords, ref_coords) <= EIG_TOL
    assert float(res.total_stress) == pytest.approx(np.sum(R.centred(D) ** 2), rel=1e-10)
    again = F.inpca(D, n_components=k)
    assert torch.equal(again.coords, res.coords)


# ----------------------------------------------------------------------------- projection


def test_projecting_reference_models_reproduces_their_coordinates(D):
    m = D.shape[0]
    for k in [3, m - 1]:  # k < m: the null centring axis is excluded
        res = F.inpca(D, n_components=k)
        X = F.project(D, D, res.eigenvalues, res.eigenvectors)
        assert X.shape == (m, k)
        assert rel(X, res.coords) <= 1e-8
        Xs = F.project_from_stats(
            D, res.row_means, res.grand_mean, res.eigenvalues, res.eigenvectors
        )
        assert rel(Xs, res.coords) <= 1e-8
        one = F.project(D[5], D, res.eigenvalues, res.eigenvectors)
        assert one.shape == (k,)
        assert rel(one, res.coords[5]) <= 1e-8


def test_projection_of_new_models_matches_eq_2_2_9_loops():
    full = model_distances(m=33, seed=5)
    new, ref = np.arange(30, 33), np.arange(30)
    D_ref, D_new = full[np.ix_(ref, ref)], full[np.ix_(new, ref)]
    res = F.inpca(D_ref, n_components=8)
    lam, U = R.as_np(res.eigenvalues), R.as_np(res.eigenvectors)
    assert (lam < 0).any()
    expected = R.project(D_new, D_ref, lam, U)
    got = F.project(D_new, D_ref, res.eigenvalues, res.eigenvectors)
    assert rel(got, expected) <= 1e-10
    got_stats = F.project_from_stats(
        D_new, res.row_means, res.grand_mean, res.eigenvalues, res.eigenvectors
    )
    assert rel(got_stats, expected) <= 1e-10
    # the printed |Λ|^(-1/2) of eq. 2.2.9 flips exactly the time-like coordinates
    printed = R.as_np(got) * np.sign(lam)
    assert np.abs(printed - expected)[:, lam < 0].max() > 1e-6


def test_time_like_coordinates_keep_their_sign_under_projection():
    # Embed the models, then project a slightly perturbed copy of each model (its distances to
    # the references change by 0.1%): it lands next to its twin, on the same side of every
    # time-like axis.
    D = model_distances(m=30, seed=6)
    res = F.inpca(D, n_components=10)
    tl = res.time_like.numpy()
    assert tl.any()
    rng = np.random.default_rng(7)
    D_new = D * (1 + 1e-3 * rng.random(D.shape))
    X = R.as_np(F.project(D_new, D, res.eigenvalues, res.eigenvectors))
    C0 = R.as_np(res.coords)
    big = np.abs(C0[:, tl]) > 0.2 * np.abs(C0[:, tl]).max()
    assert big.sum() >= 3
    assert (np.sign(X[:, tl])[big] == np.sign(C0[:, tl])[big]).all()
    assert np.abs(X - C0).max() <= 0.05 * np.abs(C0).max()


# ----------------------------------------------------------------------------- weighted


def test_uniform_weights_equal_plain_inpca(D):
    plain = F.inpca(D, n_components=10)
    for w in [np.ones(D.shape[0]), np.full(D.shape[0], 7.5)]:
        weighted = F.inpca(D, n_components=10, weights=w)
        assert rel(weighted.eigenvalues, plain.eigenvalues) <= 1e-10
        assert rel(weighted.coords, plain.coords) <= 1e-10
        assert float(weighted.total_stress) == pytest.approx(float(plain.total_stress), rel=1e-10)


def test_integer_weights_equal_plain_inpca_on_repeated_models():
    D = model_distances(m=15, seed=8)
    mu = np.random.default_rng(9).integers(1, 4, 15)
    idx = np.repeat(np.arange(15), mu)
    first = np.searchsorted(idx, np.arange(15))  # row of each model's first copy
    k = 14  # all non-null axes of the distinct models
    rep = F.inpca(D[np.ix_(idx, idx)], n_components=k)
    w = F.inpca(D, n_components=k, weights=mu.astype(np.float64))
    assert w.weights is not None
    assert w.weights.shape == (15,)
    assert np.array_equal(w.time_like.numpy(), rep.time_like.numpy())
    # coordinates of the distinct models agree (the deterministic sign convention picks the
    # same sign: repeated copies have equal entries)
    assert rel(w.coords, R.as_np(rep.coords)[first]) <= 1e-8
    # the spectra agree up to one common scale (weights are normalised internally)
    ratio = R.as_np(rep.eigenvalues) / R.as_np(w.eigenvalues)
    assert np.abs(ratio / ratio[0] - 1).max() <= 1e-8
    for d in [1, 3, 6]:
        assert float(F.explained_stress(w.eigenvalues, d, w.total_stress)) == pytest.approx(
            float(F.explained_stress(rep.eigenvalues, d, rep.total_stress)), abs=1e-9
        )
    # and the weights change the picture
    plain = F.inpca(D, n_components=k)
    assert rel(plain.coords, R.as_np(w.coords)) > 1e-3


def test_weighted_isometry_and_projection_of_reference_models():
    D = model_distances(m=20, seed=10)
    mu = np.random.default_rng(11).uniform(0.2, 3.0, 20)
    full = F.inpca(D, weights=mu)
    E = R.as_np(F.minkowski_sq_distance(full.coords, signs=full.signs))
    assert np.abs(E - D).max() <= 1e-9 * D.max()
    res = F.inpca(D, n_components=10, weights=mu)
    X = F.project(D, D, res.eigenvalues, res.eigenvectors, weights=mu)
    assert rel(X, res.coords) <= 1e-8
    Xs = F.project_from_stats(
        D, res.row_means, res.grand_mean, res.eigenvalues, res.eigenvectors, weights=res.weights
    )
    assert rel(Xs, res.coords) <= 1e-8
    np.testing.assert_allclose(R.as_np(res.row_means), D @ (mu / mu.sum()), rtol=1e-12)


def test_zero_weight_models_projected_like_eq_2_2_9_by_project():
    # §2.5.3.2: weighted InPCA with weight 0 for some models is eq. 2.2.9 for those models.
    D = model_distances(m=16, seed=12)
    keep = np.arange(13)
    mu = np.r_[np.ones(13), np.zeros(3)]
    sub = F.inpca(D[np.ix_(keep, keep)], n_components=8)
    expected = F.project(D[13:, :13], D[np.ix_(keep, keep)], sub.eigenvalues, sub.eigenvectors)
    res = F.inpca(D, n_components=8, weights=mu)
    assert rel(res.coords[:13], sub.coords) <= 1e-8
    via_project = F.project(D[13:], D, res.eigenvalues, res.eigenvectors, weights=mu)
    assert rel(via_project, expected) <= 1e-8


def test_zero_weight_models_get_their_projection_as_coordinates():
    D = model_distances(m=16, seed=12)
    keep = np.arange(13)
    mu = np.r_[np.ones(13), np.zeros(3)]
    sub = F.inpca(D[np.ix_(keep, keep)], n_components=8)
    expected = F.project(D[13:, :13], D[np.ix_(keep, keep)], sub.eigenvalues, sub.eigenvectors)
    res = F.inpca(D, n_components=8, weights=mu)
    assert rel(res.coords[13:], expected) <= 1e-8


def test_integer_multiplicities_are_accepted():
    D = model_distances(m=15, seed=8)
    mu = np.random.default_rng(9).integers(1, 4, 15)
    as_float = F.inpca(D, n_components=5, weights=mu.astype(np.float64))
    as_int = F.inpca(D, n_components=5, weights=mu)
    assert rel(as_int.coords, as_float.coords) <= 1e-12
    X = F.project(D[:3], D, as_int.eigenvalues, as_int.eigenvectors, weights=torch.from_numpy(mu))
    assert rel(X, as_float.coords[:3]) <= 1e-8


def test_project_from_stats_accepts_the_weights_given_to_inpca():
    D = model_distances(m=20, seed=10)
    mu = np.random.default_rng(11).uniform(0.2, 3.0, 20)
    res = F.inpca(D, n_components=6, weights=mu)
    via_project = F.project(D, D, res.eigenvalues, res.eigenvectors, weights=mu)
    assert rel(via_project, res.coords) <= 1e-8
    via_stats = F.project_from_stats(
        D, res.row_means, res.grand_mean, res.eigenvalues, res.eigenvectors, weights=mu
    )
    assert rel(via_stats, res.coords) <= 1e-8


# ----------------------------------------------------------------------------- inputs


def test_numpy_and_float32_inputs_give_float64_tensors(D):
    for Din in [D, D.astype(np.float32), torch.from_numpy(D).float()]:
        res = F.inpca(Din, n_components=3)
        for t in [res.coords, res.eigenvalues, res.eigenvectors, res.row_means, res.grand_mean]:
            assert isinstance(t, torch.Tensor)
            assert t.dtype == torch.float64
            assert t.device == torch.device("cpu")
    res = F.inpca(D, n_components=3)
    for out in [
        F.explained_stress(R.as_np(res.eigenvalues), 2),
        F.explained_pairwise_distance(D, R.as_np(res.coords), R.as_np(res.signs)),
        F.project(D[:2], D, R.as_np(res.eigenvalues), R.as_np(res.eigenvectors)),
    ]:
        assert isinstance(out, torch.Tensor)
        assert out.is_floating_point()


def _bad_D():
    D = model_distances(m=8, seed=13)
    asym = D.copy()
    asym[0, 1] += 0.1
    nan = D.copy()
    nan[2, 3] = nan[3, 2] = math.nan
    inf = D.copy()
    inf[2, 3] = inf[3, 2] = math.inf
    return {
        "non-square": D[:, :7],
        "1-D": D[0],
        "3-D": D[None],
        "non-symmetric": asym,
        "NaN": nan,
        "inf": inf,
        "one model": D[:1, :1],
        "empty": D[:0, :0],
        "integer": np.ones((3, 3), dtype=np.int64),
    }


@pytest.mark.parametrize("case", list(_bad_D()))
def test_bad_distance_matrix_raises_naming_D(case):
    with pytest.raises(ValueError, match="`D`"):
        F.inpca(_bad_D()[case])


@pytest.mark.parametrize("case", ["non-square", "non-symmetric", "NaN"])
def test_bad_reference_matrix_in_project_raises_naming_D_ref(case):
    D = model_distances(m=8, seed=13)
    res = F.inpca(D, n_components=2)
    with pytest.raises(ValueError, match="`D_ref`"):
        F.project(D[:2], _bad_D()[case], res.eigenvalues, res.eigenvectors)


@pytest.mark.parametrize("k", [0, 9, -1, 2.0, 2.5, "2", True], ids=repr)
def test_n_components_out_of_range_raises(k):
    D = model_distances(m=8, seed=13)
    with pytest.raises(ValueError, match="`n_components`") as info:
        F.inpca(D, n_components=k)
    assert "8" in str(info.value)


def test_numpy_integer_n_components_is_accepted():
    D = model_distances(m=8, seed=13)
    res = F.inpca(D, n_components=np.int64(2))
    assert res.coords.shape == (8, 2)


@pytest.mark.parametrize(
    "weights",
    [np.ones(7), np.ones((8, 1)), -np.ones(8), np.zeros(8), np.r_[np.ones(7), math.nan]],
    ids=["length", "2-D", "negative", "all zero", "NaN"],
)
def test_bad_weights_raise_naming_weights(weights):
    D = model_distances(m=8, seed=13)
    with pytest.raises(ValueError, match="`weights`"):
        F.inpca(D, weights=weights)
    res = F.inpca(D, n_components=2)
    with pytest.raises(ValueError, match="`weights`"):
        F.project(D[:2], D, res.eigenvalues, res.eigenvectors, weights=weights)


def test_explained_stress_and_projection_argument_errors():
    lam = np.array([3.0, -2.0, 1.0])
    for k in [-1, 4, 1.5]:
        with pytest.raises(ValueError, match="`k`"):
            F.explained_stress(lam, k)
    for bad in [np.zeros((2, 2)), np.zeros(0)]:
        with pytest.raises(ValueError, match="`eigenvalues`"):
            F.explained_stress(bad, 0)
    D = model_distances(m=8, seed=13)
    res = F.inpca(D, n_components=2)
    with pytest.raises(ValueError, match="`D_new`"):
        F.project(D[:2, :7], D, res.eigenvalues, res.eigenvectors)
    with pytest.raises(ValueError, match="`eigenvalues`"):
        F.project(D[:2], D, res.eigenvalues[:1], res.eigenvectors)
    with pytest.raises(ValueError, match="`eigenvalues`"):
        F.project(D[:2], D, torch.tensor([1.0, 0.0], dtype=torch.float64), res.eigenvectors)
    with pytest.raises(ValueError, match="`row_means`"):
        F.project_from_stats(
            D[:2], res.row_means[:7], res.grand_mean, res.eigenvalues, res.eigenvectors
        )
    with pytest.raises(ValueError, match="`coords`"):
        F.explained_pairwise_distance(D, R.as_np(res.coords)[:7], R.as_np(res.signs))
