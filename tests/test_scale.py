"""Tests of lightning_manifold.scale (issue 7): blocked distances, memmap InPCA, landmarks.

Every numerical result is compared with a plain numpy implementation written here (loops over
model pairs, a dense ``eigh``), and with the functional core where the issue asks for it.
The two-process Fabric test lives in ``test_scale_fabric.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_store

from lightning_manifold import functional as F
from lightning_manifold.scale import (
    BlockedDistances,
    ModelSource,
    class_projection_effect,
    class_projection_matrix,
    explained_pairwise_distance_blocked,
    inpca_memmap,
    landmark_inpca,
    pairwise_bhattacharyya_blocked,
    plan_blocks,
    select_landmarks,
)
from lightning_manifold.scale.distances import KERNEL_WORKSPACE_BYTES


# ------------------------------------------------------------------------------ data + references
def trajectories(
    runs: int = 6, T: int = 20, N: int = 40, C: int = 4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(runs * T, N, C) float64 log-probabilities of runs moving from ignorance to truth."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(C, size=N)
    onehot = np.eye(C)[labels]
    configs = rng.standard_normal((3, N, C))
    tau = np.linspace(0, 1, T)
    out = []
    for r in range(runs):
        base = 3 * onehot + configs[r % 3] + 0.3 * rng.standard_normal((N, C))
        logits = (4 * tau**2)[:, None, None] * base + 0.05 * rng.standard_normal((T, N, C))
        logits -= logits.max(-1, keepdims=True)
        out.append(logits - np.log(np.exp(logits).sum(-1, keepdims=True)))
    return np.concatenate(out), labels


def plain_bhattacharyya(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """d_B (eq. 2.2.2) by a loop over pairs: -(1/N) Σ_n log Σ_c sqrt(p q)."""
    out = np.zeros((len(P), len(Q)))
    for u in range(len(P)):
        for v in range(len(Q)):
            out[u, v] = -np.mean(np.log(np.sum(np.sqrt(P[u] * Q[v]), axis=-1)))
    return out


def plain_inpca(D: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Dense InPCA (eq. 2.2.6): eigenvalues (k,) by |λ| desc, coords (m, k), ||W||_F^2."""
    m = len(D)
    L = np.eye(m) - np.ones((m, m)) / m
    W = -L @ D @ L / 2
    lam, U = np.linalg.eigh((W + W.T) / 2)
    order = np.argsort(-np.abs(lam))[:k]
    lam, U = lam[order], U[:, order]
    for j in range(k):  # largest-|entry| positive
        if U[np.argmax(np.abs(U[:, j])), j] < 0:
            U[:, j] *= -1
    return lam, U * np.sqrt(np.abs(lam)), float((W**2).sum())


@pytest.fixture(scope="module")
def traj() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log-probs (120, 40, 4), labels (40,), plain d_B matrix (120, 120)."""
    lp, y = trajectories()
    P = np.exp(lp)
    D = plain_bhattacharyya(P, P)
    np.fill_diagonal(D, 0)
    return lp, y, D


# ------------------------------------------------------------------------------ blocked distances
@pytest.mark.parametrize("block_size", [1, 7, 32, 200])
def test_blocked_equals_dense(tmp_path: Path, traj, block_size: int) -> None:
    lp, _, D_ref = traj
    lp = lp[:45]
    res = pairwise_bhattacharyya_blocked(
        lp, tmp_path / "D.npy", block_size=block_size, progress=False
    )
    D = np.load(tmp_path / "D.npy")
    nb = -(-45 // min(block_size, 45))
    assert res.complete
    assert res.blocks_total == nb * (nb + 1) // 2 == res.blocks_computed
    np.testing.assert_allclose(D, D_ref[:45, :45], rtol=0, atol=1e-12)
    np.testing.assert_allclose(D, F.bhattacharyya(np.exp(lp)).numpy(), rtol=0, atol=1e-12)
    assert np.array_equal(D, D.T)
    assert np.all(np.diag(D) == 0)
    assert np.array_equal(res.matrix, D)


def test_blocked_rectangular_and_file_sources(tmp_path: Path, traj) -> None:
    lp, _, _ = traj
    lp32 = lp[:30].astype(np.float32)
    np.save(tmp_path / "models.npy", lp32)
    src = ModelSource.from_npy(tmp_path / "models.npy")
    other = src.subset([29, 3, 3, 10, 11, 12])
    res = pairwise_bhattacharyya_blocked(
        src, tmp_path / "R.npy", other=other, block_size=4, progress=False
    )
    P = np.exp(lp32.astype(np.float64))
    expected = plain_bhattacharyya(P, P[[29, 3, 3, 10, 11, 12]])
    np.testing.assert_allclose(np.load(tmp_path / "R.npy"), expected, rtol=0, atol=1e-12)
    assert res.blocks_total == 8 * 2
    # a top-level np.memmap is read through its file: same numbers
    mm = np.load(tmp_path / "models.npy", mmap_mode="r")
    res2 = pairwise_bhattacharyya_blocked(
        ModelSource.from_array(mm),
        tmp_path / "R2.npy",
        other=mm[[29, 3, 3, 10, 11, 12]],
        block_size=4,
        progress=False,
    )
    assert np.array_equal(res2.matrix, res.matrix)
    # probabilities and sqrt-probabilities as stored kinds
    for kind, arr in (("probs", P), ("sqrt_probs", np.sqrt(P))):
        r = pairwise_bhattacharyya_blocked(
            ModelSource.from_array(arr, kind=kind),
            tmp_path / f"{kind}.npy",
            block_size=9,
            progress=False,
        )
        expected = plain_bhattacharyya(P, P)
        np.fill_diagonal(expected, 0)
        np.testing.assert_allclose(r.matrix, expected, rtol=0, atol=1e-12)


def test_store_source(tmp_path: Path, traj) -> None:
    lp, y, _ = traj
    C = lp.shape[2]
    write_store(tmp_path, "runA", y, C, [lp[t].astype(np.float32) for t in range(5)])
    b = write_store(tmp_path, "runB", y, C)
    bad = np.full_like(lp[0], np.nan)
    b.append(lp[20], step=0, epoch=0)
    b.append(bad, step=1, epoch=0)  # diverged: recorded invalid, skipped
    b.append(lp[21], step=2, epoch=0)
    src = ModelSource.from_stores(tmp_path)
    assert src.num_models == 7
    assert np.array_equal(src.labels, y)
    assert src.steps.tolist() == [0, 1, 2, 3, 4, 0, 2]
    res = pairwise_bhattacharyya_blocked(src, tmp_path / "D.npy", block_size=3, progress=False)
    P = np.exp(np.concatenate([lp[:5].astype(np.float32).astype(np.float64), lp[[20, 21]]]))
    expected = plain_bhattacharyya(P, P)
    np.fill_diagonal(expected, 0)
    np.testing.assert_allclose(res.matrix, expected, rtol=0, atol=1e-12)


def test_memory_budget_respected(tmp_path: Path, traj, monkeypatch: pytest.MonkeyPatch) -> None:
    N, C = 40, 4
    per_model = N * C * 8
    for budget in [KERNEL_WORKSPACE_BYTES + 10_000, KERNEL_WORKSPACE_BYTES + 200_000, 2**30]:
        for cols in (None, 17):
            plan = plan_blocks(120, cols, N, C, budget, raw_itemsize=4)
            assert plan.total_bytes <= budget
            assert (
                plan.input_bytes
                == (plan.block_rows + plan.block_cols) * per_model
                + max(plan.block_rows, plan.block_cols) * N * C * (8 + 4)  # load: raw + copy
            )
            assert plan.output_bytes == 2 * plan.block_rows * plan.block_cols * 8
            if plan.block_rows < 120 and cols is None:  # maximal: one more model does not fit
                bigger = plan_blocks(
                    120, cols, N, C, 2**40, block_size=plan.block_rows + 1, raw_itemsize=4
                )
                assert bigger.total_bytes > budget
    with pytest.raises(ValueError, match="memory_budget"):
        plan_blocks(10, None, N, C, KERNEL_WORKSPACE_BYTES)
    with pytest.raises(ValueError, match="block_size"):
        plan_blocks(100, None, N, C, KERNEL_WORKSPACE_BYTES + 10_000, block_size=50)

    # the blocks actually handed to the kernel fit the plan's input bytes
    seen: list[int] = []
    kernel = F.bhattacharyya_from_sqrt

    def spy(S, T=None):
        seen.append(S.nbytes + (0 if T is None else T.nbytes))
        return kernel(S, T)

    monkeypatch.setattr(F, "bhattacharyya_from_sqrt", spy)
    lp = traj[0]
    budget = KERNEL_WORKSPACE_BYTES + 100_000
    res = pairwise_bhattacharyya_blocked(
        lp, tmp_path / "D.npy", memory_budget=budget, progress=False
    )
    assert res.plan.total_bytes <= budget
    assert res.plan.block_rows < 120
    assert seen
    assert max(seen) <= res.plan.input_bytes
    np.testing.assert_allclose(res.matrix, traj[2], rtol=0, atol=1e-12)


def test_resume_after_interruption(tmp_path: Path, traj, monkeypatch: pytest.MonkeyPatch) -> None:
    lp = traj[0][:50]
    full = pairwise_bhattacharyya_blocked(lp, tmp_path / "full.npy", block_size=8, progress=False)
    total = full.blocks_total  # 7 row blocks -> 28
    part = pairwise_bhattacharyya_blocked(
        lp, tmp_path / "D.npy", block_size=8, progress=False, max_blocks=10
    )
    assert (part.blocks_computed, part.blocks_done, part.complete) == (10, 10, False)
    with pytest.raises(ValueError, match="complete"):
        inpca_memmap(part, 2, progress=False)

    # a crash (exception) in the middle of the next run: blocks before it are kept
    calls = {"n": 0}
    kernel = F.bhattacharyya_from_sqrt

    def crashing(S, T=None):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return kernel(S, T)

    monkeypatch.setattr(F, "bhattacharyya_from_sqrt", crashing)
    with pytest.raises(KeyboardInterrupt):
        pairwise_bhattacharyya_blocked(lp, tmp_path / "D.npy", block_size=8, progress=False)
    done = json.loads((tmp_path / "D.npy.progress" / "done-rank0.json").read_text())["done"]
    assert len(done) == 15

    counting = {"n": 0}

    def count(S, T=None):
        counting["n"] += 1
        return kernel(S, T)

    monkeypatch.setattr(F, "bhattacharyya_from_sqrt", count)
    res = pairwise_bhattacharyya_blocked(lp, tmp_path / "D.npy", progress=False)  # adopts 8
    assert res.complete
    assert res.blocks_computed == total - 15 == counting["n"]
    assert np.array_equal(res.matrix, full.matrix)
    again = pairwise_bhattacharyya_blocked(lp, tmp_path / "D.npy", progress=False)
    assert again.blocks_computed == 0
    assert counting["n"] == total - 15

    # resuming with other models, or a forced different block size, is refused
    with pytest.raises(ValueError, match="resume=False"):
        pairwise_bhattacharyya_blocked(traj[0][:49], tmp_path / "D.npy", progress=False)
    with pytest.raises(ValueError, match="block_size"):
        pairwise_bhattacharyya_blocked(lp, tmp_path / "D.npy", block_size=5, progress=False)
    fresh = pairwise_bhattacharyya_blocked(
        lp, tmp_path / "D.npy", block_size=5, progress=False, resume=False
    )
    assert fresh.blocks_computed == fresh.blocks_total == 55
    np.testing.assert_allclose(fresh.matrix, full.matrix, rtol=0, atol=1e-12)


def test_blocked_errors(tmp_path: Path, traj) -> None:
    lp = traj[0]
    with pytest.raises(ValueError, match="same probe"):
        pairwise_bhattacharyya_blocked(lp, tmp_path / "a.npy", other=lp[:, :10], progress=False)
    with pytest.raises(ValueError, match=r"\(m, N, C\)"):
        ModelSource.from_array(lp[0])
    with pytest.raises(TypeError, match="source"):
        pairwise_bhattacharyya_blocked([1, 2], tmp_path / "a.npy", progress=False)
    with pytest.raises(ValueError, match="labels"):
        ModelSource.from_array(lp, labels=np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="kind"):
        ModelSource.from_array(lp, kind="logits")
    with pytest.raises(ValueError, match=r"\[0, 120\)"):
        ModelSource.from_array(lp).subset([0, 120])


# ------------------------------------------------------------------------------ memmap InPCA
def test_inpca_memmap_matches_dense(tmp_path: Path, traj) -> None:
    _, _, D = traj
    np.save(tmp_path / "D.npy", D)
    k = 6
    lam_ref, X_ref, stress_ref = plain_inpca(D, k)
    dense = F.inpca(torch.from_numpy(D), k)
    assert (lam_ref < 0).any()
    assert (lam_ref > 0).any()
    for source, kw in (
        (tmp_path / "D.npy", {"block_rows": 7, "memory_budget": 10_000}),  # streamed rows
        (tmp_path / "D.npy", {}),  # loaded once
        (D, {"block_rows": 50}),
        (torch.from_numpy(D), {}),
    ):
        res = inpca_memmap(source, k, progress=False, **kw)
        np.testing.assert_allclose(res.eigenvalues.numpy(), lam_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(res.coords.numpy(), X_ref, rtol=0, atol=1e-8)
        np.testing.assert_allclose(res.coords.numpy(), dense.coords.numpy(), rtol=0, atol=1e-8)
        np.testing.assert_allclose(res.eigenvalues.numpy(), dense.eigenvalues.numpy(), rtol=1e-10)
        assert float(res.total_stress) == pytest.approx(stress_ref, rel=1e-12)
        np.testing.assert_allclose(res.row_means.numpy(), D.mean(1), rtol=1e-13)
        assert float(res.grand_mean) == pytest.approx(D.mean(), rel=1e-13)
        assert res.weights is None
    # compatible with the functional core: projecting reference models gives their coords
    X = F.project_from_stats(
        D[:9], res.row_means, res.grand_mean, res.eigenvalues, res.eigenvectors
    )
    np.testing.assert_allclose(X.numpy(), res.coords[:9].numpy(), rtol=0, atol=1e-10)
    es = F.explained_stress(res.eigenvalues, k, res.total_stress)
    expected = 1 - np.sqrt(1 - (lam_ref**2).sum() / stress_ref)
    assert float(es) == pytest.approx(expected, rel=1e-9)
    # tiny problems fall back to the dense decomposition
    small = inpca_memmap(D[:4, :4], 3, progress=False)
    np.testing.assert_allclose(small.coords.numpy(), plain_inpca(D[:4, :4], 3)[1], atol=1e-10)


def test_inpca_memmap_errors(traj) -> None:
    D = traj[2]
    with pytest.raises(ValueError, match="square"):
        inpca_memmap(D[:, :5], 2, progress=False)
    bad = D.copy()
    bad[0, 1] += 1
    with pytest.raises(ValueError, match="symmetric"):
        inpca_memmap(bad, 2, progress=False)
    bad = D.copy()
    bad[3, 3] = 1
    with pytest.raises(ValueError, match="zero diagonal"):
        inpca_memmap(bad, 2, progress=False)
    with pytest.raises(ValueError, match="n_components"):
        inpca_memmap(D, 121, progress=False)
    bad = D.copy()
    bad[5, 6] = bad[6, 5] = np.nan
    with pytest.raises(ValueError, match="finite"):
        inpca_memmap(bad, 2, progress=False)


# ------------------------------------------------------------------------------ landmarks
def test_landmark_with_all_models_is_exact(tmp_path: Path, traj) -> None:
    lp, _, D = traj
    emb = landmark_inpca(lp, len(lp), n_components=3, holdout=30, workdir=tmp_path, progress=False)
    lam_ref, X_ref, _ = plain_inpca(D, 3)
    np.testing.assert_allclose(emb.result.eigenvalues.numpy(), lam_ref, rtol=1e-10)
    np.testing.assert_allclose(emb.coords.numpy(), X_ref, rtol=0, atol=1e-8)
    exact = F.inpca(torch.from_numpy(D), 3)
    np.testing.assert_allclose(emb.coords.numpy(), exact.coords.numpy(), rtol=0, atol=1e-8)
    # the held-out figure is eq. 2.4.2 on the held-out models
    h = emb.holdout
    assert len(h) == 30
    assert len(np.unique(h)) == 30
    expected = float(F.explained_pairwise_distance(D[np.ix_(h, h)], X_ref[h], np.sign(lam_ref)))
    assert emb.explained_pairwise_distance == pytest.approx(expected, abs=1e-10)
    assert emb.landmark_distances is not None
    assert emb.landmark_distances.exists()


def test_landmarks_few_suffice(traj) -> None:
    lp, _, D = traj
    emb = landmark_inpca(
        lp, 15, n_components=3, weighting="uniform", holdout=40, seed=3, progress=False
    )
    lm, h = emb.landmarks, emb.holdout
    assert len(set(lm.tolist())) == 15
    assert not set(h.tolist()) & set(lm.tolist())
    # fit = plain InPCA of the landmark block; all models projected with eq. 2.2.9
    lam_ref, X_lm, _ = plain_inpca(D[np.ix_(lm, lm)], 3)
    np.testing.assert_allclose(emb.result.eigenvalues.numpy(), lam_ref, rtol=1e-10)
    np.testing.assert_allclose(emb.coords[lm].numpy(), X_lm, atol=1e-8)
    m = len(D)
    r = D[np.ix_(lm, lm)].mean(1)
    g = r.mean()
    U = X_lm / np.sqrt(np.abs(lam_ref))
    Wn = -0.5 * (D[:, lm] - D[:, lm].mean(1, keepdims=True) - r[None, :] + g)
    X_all = Wn @ U / (np.sign(lam_ref) * np.sqrt(np.abs(lam_ref)))
    np.testing.assert_allclose(emb.coords.numpy(), X_all, atol=1e-8)
    assert emb.coords.shape == (m, 3)
    # quality on held-out models: eq. 2.4.2, and comparable to an exact InPCA of them
    Dh = D[np.ix_(h, h)]
    E = sum(
        s * (X_all[h, None, j] - X_all[None, h, j]) ** 2 for j, s in enumerate(np.sign(lam_ref))
    )
    expected = 1 - np.abs(Dh - E).sum() / Dh.sum()
    assert emb.explained_pairwise_distance == pytest.approx(expected, abs=1e-10)
    _, X_h, _ = plain_inpca(Dh, 3)
    lam_h = plain_inpca(Dh, 3)[0]
    E_h = sum(s * (X_h[:, None, j] - X_h[None, :, j]) ** 2 for j, s in enumerate(np.sign(lam_h)))
    assert emb.exact_explained_pairwise_distance == pytest.approx(
        1 - np.abs(Dh - E_h).sum() / Dh.sum(), abs=1e-8
    )
    assert emb.explained_pairwise_distance > emb.exact_explained_pairwise_distance - 0.1
    assert set(emb.seconds) >= {"select", "landmark_distances", "fit", "project", "holdout"}


def test_voronoi_weighted_landmarks_equal_repeated_landmarks(traj) -> None:
    """Weighted fit (§2.5.3.2) = plain InPCA of landmarks repeated by their cell sizes."""
    lp, _, D = traj
    emb = landmark_inpca(lp, 10, n_components=3, holdout=30, seed=5, progress=False)
    lm = emb.landmarks
    cells = np.bincount(D[:, lm].argmin(1), minlength=10)
    assert emb.cell_sizes.tolist() == cells.tolist()
    assert cells.sum() == len(D)
    rep = np.repeat(lm, cells)  # each landmark `cells` times
    lam, X_rep, _ = plain_inpca(D[np.ix_(rep, rep)], 3)
    first = np.r_[0, np.cumsum(cells)[:-1]]
    np.testing.assert_allclose(emb.result.coords.numpy(), X_rep[first], atol=1e-8)
    # eq. 2.2.9 on the repeated reference set places every model where the weighted fit does
    Dr = D[np.ix_(rep, rep)]
    r, g = Dr.mean(1), Dr.mean()
    U = X_rep / np.sqrt(np.abs(lam))
    Wn = -0.5 * (D[:, rep] - D[:, rep].mean(1, keepdims=True) - r[None, :] + g)
    X_all = Wn @ U / (np.sign(lam) * np.sqrt(np.abs(lam)))
    np.testing.assert_allclose(emb.coords.numpy(), X_all, atol=1e-8)
    with pytest.raises(ValueError, match="weighting"):
        landmark_inpca(lp, 10, weighting="density", progress=False)


def test_inpca_memmap_weighted(tmp_path: Path, traj) -> None:
    D = traj[2][:60, :60]
    w = np.random.default_rng(0).integers(1, 4, size=60).astype(float)
    rep = np.repeat(np.arange(60), w.astype(int))
    _, X_rep, _ = plain_inpca(D[np.ix_(rep, rep)], 4)
    first = np.r_[0, np.cumsum(w.astype(int))[:-1]]
    dense = F.inpca(torch.from_numpy(D), 4, weights=torch.from_numpy(w))
    np.save(tmp_path / "D.npy", D)
    res = inpca_memmap(tmp_path / "D.npy", 4, weights=w, block_rows=9, progress=False)
    np.testing.assert_allclose(res.coords.numpy(), X_rep[first], atol=1e-8)
    np.testing.assert_allclose(res.coords.numpy(), dense.coords.numpy(), atol=1e-8)
    np.testing.assert_allclose(res.eigenvalues.numpy(), dense.eigenvalues.numpy(), rtol=1e-10)
    np.testing.assert_allclose(res.weights.numpy(), dense.weights.numpy(), rtol=1e-12)
    assert float(res.total_stress) == pytest.approx(float(dense.total_stress), rel=1e-10)
    X = F.project_from_stats(
        D[:5], res.row_means, res.grand_mean, res.eigenvalues, res.eigenvectors, weights=res.weights
    )
    np.testing.assert_allclose(X.numpy(), res.coords[:5].numpy(), atol=1e-10)
    with pytest.raises(ValueError, match="weights"):
        inpca_memmap(D, 2, weights=np.ones(3), progress=False)


def test_farthest_point_is_greedy_max_min(traj) -> None:
    lp, _, D = traj
    lm = select_landmarks(lp, 12, method="farthest", seed=1, progress=False)
    assert len(set(lm.tolist())) == 12
    for l in range(1, 12):
        nearest = D[:, lm[:l]].min(1)
        nearest[lm[:l]] = -np.inf
        assert lm[l] == int(np.argmax(nearest))
    # the first landmark is the farthest model from some model
    assert any(int(np.argmax(D[s])) == lm[0] for s in range(len(D)))
    # a candidate pool restricts the search
    pool_lm = select_landmarks(lp, 5, candidates=20, seed=0, progress=False)
    rng = np.random.default_rng(0)
    pool = np.sort(rng.choice(len(lp), size=20, replace=False))
    assert set(pool_lm.tolist()) <= set(pool.tolist())


def test_uniform_in_progress_landmarks(traj) -> None:
    lp, y, _ = traj
    src = ModelSource.from_array(lp, labels=y)
    lm = select_landmarks(src, 10, method="progress", progress=False)
    prog = F.progress_from_log_probs(lp, y).numpy()
    used: set[int] = set()
    expected = []
    for target in np.linspace(prog.min(), prog.max(), 10):
        cand = [(abs(prog[i] - target), i) for i in range(len(prog)) if i not in used]
        pick = min(cand)[1]
        used.add(pick)
        expected.append(pick)
    assert lm.tolist() == expected
    with pytest.raises(ValueError, match="labels"):
        select_landmarks(lp, 10, method="progress", progress=False)
    with pytest.raises(ValueError, match="method"):
        select_landmarks(lp, 10, method="random", progress=False)
    with pytest.raises(ValueError, match="n_landmarks"):
        landmark_inpca(lp, 0, progress=False)
    with pytest.raises(ValueError, match="n_components"):
        landmark_inpca(lp, 3, n_components=3, progress=False)


def test_explained_pairwise_distance_blocked(traj) -> None:
    D = traj[2]
    res = F.inpca(torch.from_numpy(D), 3)
    full = float(F.explained_pairwise_distance(D, res.coords, res.signs))
    for rows in (1, 7, 500):
        blocked = explained_pairwise_distance_blocked(D, res.coords, res.signs, block_rows=rows)
        assert blocked == pytest.approx(full, abs=1e-12)


# ------------------------------------------------------------------------------ many classes
def test_class_projection_permutation_keeps_distances(tmp_path: Path, traj) -> None:
    lp, _, D = traj
    C = lp.shape[2]
    perm = np.eye(C)[[2, 0, 3, 1]]
    res = pairwise_bhattacharyya_blocked(
        lp, tmp_path / "D.npy", class_projection=perm, block_size=50, progress=False
    )
    np.testing.assert_allclose(res.matrix, D, rtol=0, atol=1e-12)
    eff = res.class_projection_effect
    assert eff is not None
    assert eff.projected_classes == C
    assert eff.relative_change_max < 1e-10
    assert eff.correlation == pytest.approx(1, abs=1e-12)


def test_class_projection_effect_reported(tmp_path: Path, traj) -> None:
    lp, _, D = traj
    lp = lp[:40]
    D = D[:40, :40]
    M = class_projection_matrix(lp.shape[2], 2, seed=4).numpy()
    assert M.shape == (4, 2)
    assert np.all(M >= 0)
    np.testing.assert_allclose(M.sum(1), 1, atol=1e-12)
    Pm = np.exp(lp) @ M
    Dm = plain_bhattacharyya(Pm, Pm)
    np.fill_diagonal(Dm, 0)
    res = pairwise_bhattacharyya_blocked(
        lp, tmp_path / "D.npy", class_projection=2, seed=4, block_size=16, progress=False
    )
    np.testing.assert_allclose(res.matrix, Dm, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(res.class_projection.numpy(), M)
    assert np.all(Dm <= D + 1e-12)  # a Markov kernel never increases d_B
    eff = res.class_projection_effect
    iu = np.triu_indices(40, 1)
    d, dp = D[iu], Dm[iu]
    rel = np.abs(dp - d) / d
    assert eff.num_models == 40
    assert eff.num_pairs == len(d)
    assert eff.relative_change_median == pytest.approx(np.median(rel), rel=1e-9)
    assert eff.relative_change_max == pytest.approx(rel.max(), rel=1e-9)
    assert eff.ratio_mean == pytest.approx((dp / d).mean(), rel=1e-9)
    assert eff.correlation == pytest.approx(np.corrcoef(d, dp)[0, 1], rel=1e-9)
    assert eff.correlation < 1 - 1e-6
    assert "class projection 4->2" in eff.summary()
    again = class_projection_effect(ModelSource.from_array(lp), 2, seed=4, num_pairs=10)
    assert again.num_models == 5
    assert again.num_pairs == 10
    with pytest.raises(ValueError, match="class_projection"):
        pairwise_bhattacharyya_blocked(
            lp, tmp_path / "E.npy", class_projection=np.ones((4, 2)), progress=False
        )
    emb = landmark_inpca(lp, 8, class_projection=2, seed=4, holdout=10, progress=False)
    assert emb.class_projection_effect == eff


def test_blocked_distances_type(tmp_path: Path, traj) -> None:
    res = pairwise_bhattacharyya_blocked(traj[0][:10], tmp_path / "x.npy", progress=False)
    assert isinstance(res, BlockedDistances)
    assert res.shape == (10, 10)
    assert res.plan.symmetric
    assert res.seconds >= 0
