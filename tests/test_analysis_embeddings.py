"""The thesis' train/test (eq. 2.3.1), 4-point (eq. 2.4.1) and sample-subset (§2.5.3.3)
embeddings of ``lightning_manifold.analysis`` against plain numpy code written here (with the
independent helpers of ``_reference``), their properties, and the README snippet as shown."""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path
from typing import Any

import _reference as R
import numpy as np
import pytest
import torch
from conftest import write_store
from matplotlib.figure import Figure

from lightning_manifold import analysis
from lightning_manifold import functional as F

REPO = Path(__file__).resolve().parents[1]
N, N_TEST, C, T = 60, 40, 4, 8
NAMES = ["a-seed0", "a-seed1", "b-seed0", "b-seed1"]


def _arrays(seed: int = 0) -> dict[str, Any]:
    """Four runs (two configurations, two seeds), each on a train probe (N samples) and a test
    probe (N_TEST samples) along the same schedule: (T, N, C) log-probabilities."""
    rng = np.random.default_rng(seed)
    y, y_test = rng.integers(0, C, N), rng.integers(0, C, N_TEST)
    train, test = [], []
    for _ in ("a", "b"):
        base, base_test = rng.normal(size=(N, C)), rng.normal(size=(N_TEST, C))
        for s in range(2):
            scales = np.linspace(0.0, 1.5 + 0.3 * s, T)[:, None, None]
            noise = 0.3 * rng.normal(size=(N, C))
            train.append(R.log_softmax(scales * (3 * np.eye(C)[y] + 1.5 * base + noise)))
            noise_test = 0.3 * rng.normal(size=(N_TEST, C))
            direction = 2 * np.eye(C)[y_test] + 1.5 * base_test + noise_test
            test.append(R.log_softmax(scales * direction))
    return {"y": y, "y_test": y_test, "train": train, "test": test}


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    d = _arrays()
    d["runs"] = analysis.load_runs(d["train"], labels=d["y"], names=NAMES)
    d["runs_test"] = analysis.load_runs(d["test"], labels=d["y_test"], names=NAMES)
    return d


# ----------------------------------------------------------------------------- plain code


def _distances(arrays: list[np.ndarray]) -> np.ndarray:
    """d_B (eq. 2.2.2) of all models of all runs, plain numpy, symmetric with a zero diagonal."""
    D = R.bhattacharyya_dense(np.exp(np.concatenate(arrays)))
    D = 0.5 * (D + D.T)
    np.fill_diagonal(D, 0.0)
    return D


def _plain_inpca(D: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Double centring, dense eigendecomposition by |λ|: (X (m, k), λ (k,), U (m, k))."""
    lam, U = R.eigh_by_magnitude(R.centred(D))
    lam, U = lam[:k], U[:, :k]
    return U * np.sqrt(np.abs(lam)), lam, U


def _eq_2_3_1(D_paired: np.ndarray, D: np.ndarray, lam: np.ndarray, U: np.ndarray) -> np.ndarray:
    """Eq. 2.3.1 as printed, by loops: W'_uv = -D'_uv/2 + (1/2m) Σ_u' (D_uu' + D_vu' -
    (1/m) Σ_v' D_u'v'); X'_wk = Σ_u W'_wu U_uk / (sign(λ_k) sqrt|λ_k|)."""
    m = D.shape[0]
    Wp = np.zeros((m, m))
    for u in range(m):
        for v in range(m):
            acc = 0.0
            for u2 in range(m):
                acc += D[u, u2] + D[v, u2] - sum(D[u2, v2] for v2 in range(m)) / m
            Wp[u, v] = -D_paired[u, v] / 2 + acc / (2 * m)
    X = np.zeros((m, U.shape[1]))
    for w in range(m):
        for k in range(U.shape[1]):
            X[w, k] = sum(Wp[w, u] * U[u, k] for u in range(m)) / (
                math.copysign(1.0, lam[k]) * math.sqrt(abs(lam[k]))
            )
    return X


def _column_signs(ours: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """(k,) ±1 that turn the plain eigenvector columns into ours (eigenvectors have no sign)."""
    return np.where(np.sum(ours * plain, 0) < 0, -1.0, 1.0)


def _kabsch_rmsd(A: np.ndarray, B: np.ndarray, groups: list[np.ndarray]) -> float:
    """Kabsch-Umeyama via SVD within each group of axes: centre, R = U Vᵀ of svd(A₀ᵀ B₀)."""
    A0, B0 = A - A.mean(0), B - B.mean(0)
    moved = np.zeros_like(A0)
    for g in groups:
        u, _, vt = np.linalg.svd(A0[:, g].T @ B0[:, g])
        moved[:, g] = A0[:, g] @ (u @ vt)
    return math.sqrt(float(np.mean(np.sum((moved - B0) ** 2, -1))))


# ----------------------------------------------------------------------------- joint train/test


def test_joint_embedding_against_plain_eq_2_3_1(data) -> None:
    ks = (1, 3, 5)
    joint = analysis.joint_embedding(data["runs"], data["runs_test"], ks=ks)
    D, D_test = _distances(data["train"]), _distances(data["test"])
    X, lam, U = _plain_inpca(D, 5)
    flip = _column_signs(joint.train_coords, X)
    X, U = X * flip, U * flip
    np.testing.assert_allclose(joint.eigenvalues, lam, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(joint.train_coords, X, rtol=1e-7, atol=1e-9)
    X_test = _eq_2_3_1(D_test, D, lam, U)
    np.testing.assert_allclose(joint.test_coords, X_test, rtol=1e-7, atol=1e-9)
    # for plain InPCA, eq. 2.2.9 on the test rows agrees (eigenvectors sum to 0)
    X_229 = R.project(D_test, D, lam, U)
    np.testing.assert_allclose(X_229, X_test, rtol=1e-7, atol=1e-9)
    signs = np.sign(lam)
    X_alone, lam_alone, _ = _plain_inpca(D_test, 5)
    for row, k in enumerate(ks):
        assert joint.explained.k[row] == k
        expected = R.explained_pairwise_distance(D, X[:, :k], signs[:k])
        assert joint.explained.train[row] == pytest.approx(expected, rel=1e-9)
        expected = R.explained_pairwise_distance(D_test, X_test[:, :k], signs[:k])
        assert joint.explained.test[row] == pytest.approx(expected, rel=1e-9)
        expected = R.explained_pairwise_distance(D_test, X_alone[:, :k], np.sign(lam_alone)[:k])
        assert joint.explained.test_alone[row] == pytest.approx(expected, rel=1e-9)
    rows = joint.to_dict()
    assert rows["run"].tolist() == [n for n in NAMES for _ in range(T)]
    assert rows["step"].tolist() == list(range(T)) * 4
    np.testing.assert_array_equal(rows["test_pc5"], joint.test_coords[:, 4])
    assert set(joint.explained.to_dict()) == {"k", "train", "test", "test_alone"}


def test_joint_embedding_of_the_train_models_themselves_lands_on_their_coordinates(data) -> None:
    # the "test" probe is the train probe, with the runs listed in another order
    order = [2, 0, 3, 1]
    same = analysis.load_runs(
        [data["train"][i] for i in order], labels=data["y"], names=[NAMES[i] for i in order]
    )
    joint = analysis.joint_embedding(data["runs"], same, ks=(2, 6))
    scale = np.abs(joint.train_coords).max()
    np.testing.assert_allclose(joint.test_coords, joint.train_coords, atol=1e-9 * scale)
    np.testing.assert_allclose(joint.explained.test, joint.explained.train, rtol=1e-9)
    np.testing.assert_allclose(joint.explained.test_alone, joint.explained.train, rtol=1e-9)
    # while another test probe does not
    other = analysis.joint_embedding(data["runs"], data["runs_test"], ks=(2, 6))
    assert np.abs(other.test_coords - other.train_coords).max() > 1e-2 * scale


def test_joint_embedding_figure_draws_both_probes_of_every_run(data) -> None:
    joint = analysis.joint_embedding(data["runs"], data["runs_test"], ks=(1, 3, 5))
    fig = analysis.joint_embedding_figure(joint, axes=(0, 3))
    assert isinstance(fig, Figure)
    ax, ax_e = fig.axes[:2]
    assert len(ax.lines) == 2 * len(NAMES)  # a train and a test line per run
    rows = np.flatnonzero(joint.model_run == 1)
    np.testing.assert_array_equal(ax.lines[3].get_xdata(), joint.test_coords[rows, 0])
    np.testing.assert_array_equal(ax.lines[3].get_ydata(), joint.test_coords[rows, 3])
    time_like = joint.eigenvalues[3] < 0
    assert ("time-like" in ax.get_ylabel()) == time_like
    np.testing.assert_array_equal(ax_e.lines[1].get_ydata(), joint.explained.test)
    with pytest.raises(ValueError, match="`axes`"):
        analysis.joint_embedding_figure(joint, axes=(0, 5))


def test_project_paired_returns_own_coordinates_of_a_weighted_inpca(data) -> None:
    D = torch.from_numpy(_distances(data["train"]))
    w = torch.linspace(0.5, 2.0, D.shape[0], dtype=torch.float64)
    res = F.inpca(D, 4, weights=w)
    X = F.project_paired(
        D, res.row_means, res.grand_mean, res.eigenvalues, res.eigenvectors, weights=res.weights
    )
    np.testing.assert_allclose(X.numpy(), res.coords.numpy(), atol=1e-9)
    with pytest.raises(ValueError, match="`weights`"):
        F.project_paired(D, res.row_means, res.grand_mean, res.eigenvalues, res.eigenvectors,
                         weights=w[:-1])  # fmt: skip


def test_joint_embedding_rejects_unpaired_probes(data) -> None:
    y, y_test = data["y"], data["y_test"]
    renamed = [*NAMES[:3], "c-seed0"]
    other_runs = analysis.load_runs(data["test"], labels=y_test, names=renamed)
    with pytest.raises(ValueError, match="same runs"):
        analysis.joint_embedding(data["runs"], other_runs)
    short = [*data["test"][:3], data["test"][3][:-1]]
    with pytest.raises(ValueError, match=r"run 'b-seed1'.*8 train snapshots.*7 test"):
        analysis.joint_embedding(
            data["runs"], analysis.load_runs(short, labels=y_test, names=NAMES)
        )
    shifted = analysis.load_runs(
        data["test"], labels=y_test, names=NAMES, steps=[np.arange(T) + 1] * 4
    )
    with pytest.raises(ValueError, match="same models"):
        analysis.joint_embedding(data["runs"], shifted)
    with pytest.raises(ValueError, match="`test`"):
        analysis.joint_embedding(data["runs"])
    with pytest.raises(TypeError, match="`test`"):
        analysis.joint_embedding(data["runs"], 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`ks`"):
        analysis.joint_embedding(data["runs"], data["runs_test"], ks=(0, 3))
    with pytest.raises(ValueError, match="`ks`"):
        analysis.joint_embedding(data["runs"], data["runs_test"], ks=(2.5,))
    two = analysis.load_runs([data["train"][0][:2]], labels=y, names=["x"])
    test_two = analysis.load_runs([data["test"][0][:2]], labels=y_test, names=["x"])
    with pytest.raises(ValueError, match="at least 3 models"):
        analysis.joint_embedding(two, test_two)
    D = torch.from_numpy(_distances(data["train"]))
    res = F.inpca(D, 3)
    with pytest.raises(ValueError, match=r"`D_paired` must be \(m, m\) with m = 32"):
        F.project_paired(D[:5], res.row_means, res.grand_mean, res.eigenvalues, res.eigenvectors)


# ----------------------------------------------------------------------------- 4-point basis


@pytest.mark.parametrize(("seed", "same_signature"), [(0, False), (1, True)])
def test_four_point_embedding_against_plain_code(seed: int, same_signature: bool) -> None:
    # seed 0: the frame's third axis is time-like, the InPCA's is not (plain Kabsch over all
    # axes); seed 1: the signatures agree (space-like and time-like axes aligned separately)
    data = _arrays(seed)
    runs = analysis.load_runs(data["train"], labels=data["y"], names=NAMES)
    levels, sigma = (0.25, 0.6), 0.05
    four = analysis.four_point_embedding(runs, levels=levels, sigma=sigma, ks=(1, 3, 8))
    lp = np.concatenate(data["train"])
    P = np.exp(lp)
    s = np.concatenate([t.progress.numpy() for t in runs.trajectories])
    np.testing.assert_array_equal(four.model_progress, s)
    # eq. 2.4.1: Gaussian weights in progress, normalised
    basis = [np.full((N, C), 1.0 / C)]
    for level in levels:
        w = np.exp(-((s - level) ** 2) / (2 * sigma**2))
        basis.append(np.einsum("m,mnc->nc", w / w.sum(), P))
    basis.append(np.eye(C)[data["y"]])
    B = np.stack(basis)
    D4 = R.bhattacharyya(B)
    D4 = 0.5 * (D4 + D4.T)
    np.fill_diagonal(D4, 0.0)
    D4[0, 3] = D4[3, 0] = 0.5 * math.log(C)  # exact: -log Σ_c sqrt(1/C · onehot)
    np.testing.assert_allclose(four.basis_distances, D4, rtol=1e-9, atol=1e-12)
    lam4, U4 = R.eigh_by_magnitude(R.centred(D4))
    k4 = int(np.sum(np.abs(lam4) > 1e-9 * np.abs(lam4).max()))
    assert four.eigenvalues.shape == (k4,)
    np.testing.assert_allclose(four.eigenvalues, lam4[:k4], rtol=1e-8)
    # models placed by eq. 2.2.9 (sign of each axis is a convention: compare Minkowski distances)
    X4 = R.project(R.bhattacharyya(P, B), D4, lam4[:k4], U4[:, :k4])
    signs4 = np.sign(lam4[:k4])
    np.testing.assert_allclose(
        R.minkowski_sq(four.coords, four.coords, signs4),
        R.minkowski_sq(X4, X4, signs4),
        atol=1e-9,
    )
    D = _distances(data["train"])
    expected = R.explained_pairwise_distance(D, X4, signs4)
    assert four.explained_four_point == pytest.approx(expected, rel=1e-8)
    X_full, lam_full, _ = _plain_inpca(D, 8)
    for row, k in enumerate((1, 3, 8)):
        expected = R.explained_pairwise_distance(D, X_full[:, :k], np.sign(lam_full[:k]))
        assert four.explained.inpca[row] == pytest.approx(expected, rel=1e-9)
    # Kabsch-Umeyama onto the top k4 axes of the full InPCA, per signature group when they agree
    target = X_full[:, :k4]
    same = bool(np.all(np.sign(lam_full[:k4]) == signs4))
    assert four.same_signature == same == same_signature
    groups = [np.flatnonzero(signs4 > 0), np.flatnonzero(signs4 < 0)] if same else [np.arange(k4)]
    groups = [g for g in groups if g.size]
    assert four.rmsd == pytest.approx(_kabsch_rmsd(X4, target, groups), rel=1e-7)
    assert four.rmsd == pytest.approx(
        math.sqrt(np.mean(np.sum((four.aligned - four.inpca_coords) ** 2, -1))), rel=1e-12
    )
    unaligned = four.coords - four.coords.mean(0) + four.inpca_coords.mean(0)
    assert four.rmsd < math.sqrt(np.mean(np.sum((unaligned - four.inpca_coords) ** 2, -1)))
    rows = four.to_dict()
    assert {"run", "step", "progress", "pc1", "aligned1", "inpca1"} <= set(rows)


def test_four_point_basis_reproduces_the_four_distances_and_places_its_points(data) -> None:
    four = analysis.four_point_embedding(data["runs"], levels=(0.3, 0.7))
    signs = np.where(four.eigenvalues < 0, -1.0, 1.0)
    assert four.eigenvalues.size == 3  # four points in general position: 3 axes, exact
    np.testing.assert_allclose(
        R.minkowski_sq(four.basis_coords, four.basis_coords, signs),
        four.basis_distances,
        atol=1e-10,
    )
    # placing P_s1 and P_s2 themselves by eq. 2.2.9 returns their frame coordinates
    lp = torch.cat([t.log_probs for t in data["runs"].trajectories])
    fc = F.four_point_coordinates(lp, torch.from_numpy(four.model_progress), data["y"])
    e = fc.basis.embedding
    placed = F.project_from_stats(
        F.four_point_distances(fc.basis_log_probs, fc.basis_log_probs, data["y"]),
        e.row_means, e.grand_mean, e.eigenvalues, e.eigenvectors,
    )  # fmt: skip
    np.testing.assert_allclose(placed.numpy(), four.basis_coords[1:3], atol=1e-9)
    np.testing.assert_allclose(fc.coords.numpy(), four.coords, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="`levels`"):
        analysis.four_point_embedding(data["runs"], levels=(0.3, 1.4))
    with pytest.raises(ValueError, match="`sigma`"):
        analysis.four_point_embedding(data["runs"], sigma=0.0)


# ----------------------------------------------------------------------------- sample subsets


def test_subset_embedding_against_plain_code(data) -> None:
    ks = (1, 3, 6)
    sub = analysis.subset_embedding(data["runs"], sizes=(8, 30), ks=ks, seed=3)
    lp = np.concatenate(data["train"])
    D = _distances(data["train"])
    assert sub.num_samples == N
    assert sorted(sub.samples) == [8, 30, N]
    for n in (8, 30):
        idx = sub.samples[n]
        assert idx.shape == (n,)
        assert np.all(np.diff(idx) > 0)
        assert idx.min() >= 0
        assert idx.max() < N
        D_n = R.bhattacharyya_dense(np.exp(lp[:, idx]))
        D_n = 0.5 * (D_n + D_n.T)
        np.fill_diagonal(D_n, 0.0)
        _, lam, U = _plain_inpca(D_n, 6)
        np.testing.assert_allclose(sub.eigenvalues[n], lam, rtol=1e-8, atol=1e-12)
        X = _eq_2_3_1(D, D_n, lam, U)
        X = X * _column_signs(sub.coords[n], X)
        np.testing.assert_allclose(sub.coords[n], X, rtol=1e-6, atol=1e-9)
        for k in ks:
            row = np.flatnonzero((sub.table.num_samples == n) & (sub.table.k == k))
            expected = R.explained_pairwise_distance(D, X[:, :k], np.sign(lam[:k]))
            assert sub.table.explained[row.item()] == pytest.approx(expected, rel=1e-8)
    assert set(sub.samples[8]) <= set(sub.samples[30])  # nested draws of one permutation
    # n = N reproduces the full embedding
    X_full, lam_full, _ = _plain_inpca(D, 6)
    np.testing.assert_allclose(sub.coords[N], X_full * _column_signs(sub.coords[N], X_full),
                               rtol=1e-7, atol=1e-9)  # fmt: skip
    np.testing.assert_array_equal(sub.samples[N], np.arange(N))
    full_rows = sub.table.num_samples == N
    expected = [R.explained_pairwise_distance(D, X_full[:, :k], np.sign(lam_full[:k])) for k in ks]
    np.testing.assert_allclose(sub.table.explained[full_rows], expected, rtol=1e-8)
    assert set(sub.to_dict()) == {"num_samples", "k", "explained"}


def test_subset_embedding_is_seeded_and_rejects_bad_sizes(data) -> None:
    runs = data["runs"]
    a = analysis.subset_embedding(runs, sizes=(10,), ks=(3,), seed=1)
    b = analysis.subset_embedding(runs, sizes=(10,), ks=(3,), seed=1)
    c = analysis.subset_embedding(runs, sizes=(10,), ks=(3,), seed=2)
    np.testing.assert_array_equal(a.samples[10], b.samples[10])
    np.testing.assert_array_equal(a.coords[10], b.coords[10])
    assert not np.array_equal(a.samples[10], c.samples[10])
    state = torch.get_rng_state()
    F.sample_subset(N, 10, seed=5)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    default = analysis.subset_embedding(runs, ks=(3,))
    assert sorted(default.samples) == [10, 50, N]  # 500 > N is left out of the default
    only_full = analysis.subset_embedding(runs, sizes=(N,), ks=(3,))
    assert only_full.table.num_samples.tolist() == [N]
    with pytest.raises(ValueError, match=r"`sizes` must be integers in \[1, N\] with N = 60"):
        analysis.subset_embedding(runs, sizes=(10, N + 1))
    with pytest.raises(ValueError, match="`sizes`"):
        analysis.subset_embedding(runs, sizes=(0,))
    with pytest.raises(ValueError, match="`sizes`"):
        analysis.subset_embedding(runs, sizes=(True,))
    flat = [np.repeat(lp[:1], 3, axis=0) for lp in data["train"][:2]]
    with pytest.raises(ValueError, match="identical"):
        analysis.subset_embedding(analysis.load_runs(flat, labels=data["y"], names=["x", "z"]))
    with pytest.raises(ValueError, match="`n` must be at most"):
        F.sample_subset(5, 6)


# ----------------------------------------------------------------------------- README


def _readme_snippet() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    found = [b for b in blocks if "joint_embedding" in b]
    assert len(found) == 1, "the README shows the thesis embeddings in one python block"
    return found[0]


def test_readme_thesis_embeddings_snippet_runs_as_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = _arrays(1)
    for name, train, test in zip(NAMES, d["train"], d["test"]):
        write_store(tmp_path / "runs", name, d["y"], C, list(train))
        write_store(tmp_path / "runs", name, d["y_test"], C, list(test), probe="test")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(_readme_snippet(), "README.md", "exec"), namespace)
    joint, four, sub = namespace["joint"], namespace["four"], namespace["sub"]
    assert isinstance(joint, analysis.JointEmbedding)
    assert joint.test_coords.shape == joint.train_coords.shape == (4 * T, 10)
    assert isinstance(four, analysis.FourPointEmbedding)
    assert four.rmsd >= 0
    assert isinstance(sub, analysis.SubsetEmbedding)
    # stores hold float32: the same answers as from the arrays, to float32 precision
    runs = analysis.load_runs(d["train"], labels=d["y"], names=NAMES)
    test = analysis.load_runs(d["test"], labels=d["y_test"], names=NAMES)
    from_arrays = analysis.joint_embedding(runs, test)
    np.testing.assert_allclose(joint.explained.test, from_arrays.explained.test, atol=1e-4)
    assert "rmsd" in printed.getvalue()
    assert (tmp_path / "joint.png").read_bytes().startswith(b"\x89PNG")
