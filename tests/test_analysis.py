"""The notebook API of ``lightning_manifold.analysis`` against plain implementations written
here, and the README's "Compare runs" snippet run exactly as shown."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import _reference as R
import numpy as np
import pytest
import torch
from conftest import write_store
from matplotlib.figure import Figure
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from test_examples import _readme_block

from lightning_manifold import analysis
from lightning_manifold import functional as F

N, C, T = 30, 4, 7


def _runs(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Four runs in two configurations (a, b), two seeds each: (T, N, C) log-probabilities."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, N)
    base = {g: rng.normal(size=(N, C)) for g in ("a", "b")}
    out = {}
    for g in ("a", "b"):
        for s in range(2):
            direction = 3 * np.eye(C)[y] + 1.5 * base[g] + 0.3 * rng.normal(size=(N, C))
            scales = np.linspace(0.0, 1.0 + 0.2 * s, T)[:, None, None]
            out[f"{g}-seed{s}"] = R.log_softmax(scales * direction)
    return out, y


@pytest.fixture(scope="module")
def runs() -> analysis.Runs:
    lps, y = _runs()
    return analysis.load_runs(list(lps.values()), labels=y, names=list(lps))


def test_load_runs_from_arrays_groups_by_seed_suffix_and_computes_progress(runs) -> None:
    lps, y = _runs()
    assert runs.names == list(lps)
    assert runs.groups == ["a", "a", "b", "b"]
    assert len(runs) == 4
    for t, lp in zip(runs.trajectories, lps.values()):
        plain = R.progress(np.exp(lp), y)[0]  # grid-search reference of eq. 2.2.4
        np.testing.assert_allclose(t.progress.numpy(), plain, atol=3e-3)
        np.testing.assert_allclose(t.error, (lp.argmax(-1) != y).mean(-1))
        assert t.steps.tolist() == list(range(T))


def test_load_runs_from_a_directory_equals_from_arrays(tmp_path: Path, runs) -> None:
    lps, y = _runs()
    for name, lp in lps.items():
        write_store(tmp_path, name, y, C, list(lp))
    from_dir = analysis.load_runs(tmp_path)
    assert sorted(from_dir.names) == sorted(runs.names)
    order = [from_dir.names.index(n) for n in runs.names]
    D_dir = from_dir.distances().matrix[np.ix_(order, order)]
    # stores hold float32: distances agree to float32 precision
    np.testing.assert_allclose(D_dir, runs.distances().matrix, rtol=1e-4, atol=1e-6)


def test_distances_clusters_and_group_summary_against_plain_code(runs) -> None:
    dist = runs.distances(n_points=20)
    D = dist.matrix
    for i in range(4):
        for j in range(4):
            u, v = runs.trajectories[i], runs.trajectories[j]
            if i != j:
                expected = F.trajectory_distance(
                    u.probs, u.progress, v.probs, v.progress, n_points=20
                )
                assert D[i, j] == pytest.approx(float(expected), rel=1e-9)
    assert np.array_equal(D, D.T)
    # clusters at any cut, against scipy called directly
    for k in (1, 2, 3, 4):
        labels = dist.clusters(k)
        plain = fcluster(linkage(squareform(D, checks=False), "average"), k, "maxclust")
        same_plain = plain[:, None] == plain[None, :]
        got = np.array([labels[n] for n in dist.names])
        assert np.array_equal(got[:, None] == got[None, :], same_plain)
        assert set(got.tolist()) == set(range(1, len(set(plain.tolist())) + 1))
    with pytest.raises(ValueError, match="--clusters"):
        dist.clusters(5)
    # within vs between: plain loops
    summary = dist.group_summary()
    g = runs.groups
    for row, name in enumerate(summary.group):
        within = [D[i, j] for i in range(4) for j in range(4) if i != j and g[i] == g[j] == name]
        between = [D[i, j] for i in range(4) for j in range(4) if g[i] == name and g[j] != name]
        assert summary.within[row] == pytest.approx(np.mean(within))
        assert summary.between[row] == pytest.approx(np.mean(between))
        assert summary.runs[row] == 2
    assert summary.within.max() < summary.between.min()  # the configurations separate
    overall = summary.overall()
    assert overall["within"] == pytest.approx(np.mean([D[0, 1], D[2, 3]]))
    table = summary.to_dict()
    assert set(table) == {"group", "runs", "within", "between", "ratio"}
    assert all(isinstance(v, np.ndarray) and v.shape == (2,) for v in table.values())


def test_tube_widths_and_bands_against_plain_code(runs) -> None:
    tubes = runs.tube_widths(n_points=9)
    bands = tubes.bands()
    assert list(bands) == ["a", "b"]
    for g in ("a", "b"):
        members = [t for t in runs.trajectories if t.group == g]
        lo = max(float(t.progress.min()) for t in members)
        hi = min(float(t.progress.max()) for t in members)
        grid = np.linspace(lo, hi, 9)
        P = np.stack([R.reindex_by_progress(t.probs, t.progress, grid)[0] for t in members])
        plain = R.tube_width(P)  # (R, S)
        np.testing.assert_allclose(bands[g]["progress"], grid, rtol=1e-12)
        np.testing.assert_allclose(bands[g]["mean"], plain.mean(0), rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(bands[g]["low"], plain.min(0), rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(bands[g]["high"], plain.max(0), rtol=1e-7, atol=1e-12)
    assert tubes.to_dict()["width"].shape == (4 * 9,)


def test_relative_speed_is_a_curve_over_progress(runs) -> None:
    speed = runs.relative_speed(reference="a-seed0", n_points=11)
    assert speed.reference == "a-seed0"
    assert set(speed.run.tolist()) == {"a-seed1", "b-seed0", "b-seed1"}
    ref = runs.trajectories[0]
    for name in ("a-seed1", "b-seed1"):
        t = runs.trajectories[runs.names.index(name)]
        sel = speed.run == name
        s = speed.progress[sel]
        # plain: progress is increasing here, so the first crossing is np.interp's inverse
        assert np.all(np.diff(t.progress.numpy()) > 0)
        mine = np.interp(s, t.progress.numpy(), t.steps, left=np.nan, right=np.nan)
        theirs = np.interp(s, ref.progress.numpy(), ref.steps, left=np.nan, right=np.nan)
        ok = np.isfinite(mine) & (theirs > 0)
        np.testing.assert_allclose(speed.ratio[sel][ok], mine[ok] / theirs[ok], rtol=1e-9)
        assert np.isnan(speed.ratio[sel][~ok]).all()


def _plain_spectrum_stress(P: np.ndarray, ks: list[int]) -> list[float]:
    """eq. 2.2.8 on the full spectrum of -1/2 L D L, D plain Bhattacharyya of P (m, N, C)."""
    m = P.shape[0]
    D = np.array(
        [[-np.mean(np.log(np.sqrt(P[i] * P[j]).sum(-1))) for j in range(m)] for i in range(m)]
    )
    L = np.eye(m) - 1.0 / m
    lam = np.linalg.eigvalsh(-0.5 * L @ D @ L)
    sq = np.sort(lam**2)[::-1]
    return [1 - np.sqrt(sq[k:].sum() / sq.sum()) for k in ks]


def test_explained_stress_for_any_k_models_alone_and_with_landmarks(runs) -> None:
    ks = [1, 2, 5, 20]
    ref = runs.embedding(n_components=3)
    table = analysis.explained_stress_table(runs, ks, ref)
    P = np.exp(np.concatenate([t.log_probs.numpy() for t in runs.trajectories]))
    np.testing.assert_allclose(table.models, _plain_spectrum_stress(P, ks), rtol=1e-8)
    y = runs.labels
    landmarks = R.ignorance_truth_points(y, C, np.linspace(0.0, 1.0, 18))  # P0, 16, P*
    plain = _plain_spectrum_stress(np.concatenate([P, landmarks]), ks)
    np.testing.assert_allclose(table.with_landmarks, plain, rtol=1e-8)
    assert not np.allclose(table.models, table.with_landmarks)  # they differ, both reported
    # the map's own eigenvalues give the same numbers where it keeps enough axes
    small = analysis.explained_stress_table(runs, [1, 3], ref)
    np.testing.assert_allclose(
        small.with_landmarks,
        _plain_spectrum_stress(np.concatenate([P, landmarks]), [1, 3]),
        rtol=1e-6,
    )


def test_stress_table_reuses_the_fitted_matrix_with_or_without_landmarks(runs) -> None:
    ks = [1, 2, 5, 20]
    P = np.exp(np.concatenate([t.log_probs.numpy() for t in runs.trajectories]))
    m = P.shape[0]
    landmarks = R.ignorance_truth_points(runs.labels, C, np.linspace(0.0, 1.0, 18))
    plain_all = np.concatenate([P, landmarks])
    plain_D = np.array(
        [[-np.mean(np.log(np.sqrt(a * b).sum(-1))) for b in plain_all] for a in plain_all]
    )
    for with_landmarks in (True, False):
        ref = runs.embedding(n_components=3, landmarks=with_landmarks)
        fitted = ref.fit_distances.numpy()
        size = m + 18 if with_landmarks else m
        np.testing.assert_allclose(fitted, plain_D[:size, :size], rtol=1e-9, atol=1e-12)
        table = analysis.explained_stress_table(runs, ks, ref)
        np.testing.assert_allclose(table.models, _plain_spectrum_stress(P, ks), rtol=1e-8)
        np.testing.assert_allclose(
            table.with_landmarks, _plain_spectrum_stress(plain_all, ks), rtol=1e-8
        )
        ref.fit_distances = None  # as after ReferenceEmbedding.load: computed again, same table
        again = analysis.explained_stress_table(runs, ks, ref)
        # k = 20 keeps all but rounding: 1 - sqrt(residual) is only good to ~sqrt(eps)
        tol = 10 * np.sqrt(np.finfo(np.float64).eps)
        np.testing.assert_allclose(again.models, table.models, rtol=tol)
        np.testing.assert_allclose(again.with_landmarks, table.with_landmarks, rtol=tol)


def test_reindexing_by_error_compares_runs_at_equal_accuracy(runs) -> None:
    by_error = runs.distances(n_points=12, index="error").matrix
    u, v = runs.trajectories[0], runs.trajectories[2]
    lps, y = _runs()
    acc_u = 1 - (lps["a-seed0"].argmax(-1) != y).mean(-1)  # plain accuracy along training
    acc_v = 1 - (lps["b-seed0"].argmax(-1) != y).mean(-1)
    expected = F.trajectory_distance(u.probs, acc_u, v.probs, acc_v, n_points=12)
    assert by_error[0, 2] == pytest.approx(float(expected), rel=1e-9)
    assert not np.allclose(by_error, runs.distances(n_points=12).matrix)
    with pytest.raises(ValueError, match="`index`"):
        runs.distances(index="loss")


def test_normalised_distance_of_remark_3_3_3_against_plain_code(runs) -> None:
    curve = runs.normalised_distance("a", "b", n_points=6)
    trajs = {g: [t for t in runs.trajectories if t.group == g] for g in ("a", "b")}
    lo = max(float(t.progress.min()) for ts in trajs.values() for t in ts)
    hi = min(float(t.progress.max()) for ts in trajs.values() for t in ts)
    grid = np.linspace(lo, hi, 6)
    np.testing.assert_allclose(curve.progress, grid, rtol=1e-12)
    expected = []
    for s in grid:
        models = {
            g: [R.reindex_by_progress(t.probs, t.progress, [s])[0][0] for t in ts]
            for g, ts in trajs.items()
        }
        mean = {g: np.mean(ms, axis=0) for g, ms in models.items()}
        radius = {
            g: max(R.bhattacharyya(m[None], mean[g][None])[0, 0] for m in ms)
            for g, ms in models.items()
        }
        d = R.bhattacharyya(mean["a"][None], mean["b"][None])[0, 0]
        with np.errstate(invalid="ignore"):  # at ignorance every run is the same model: 0 / 0
            expected.append(2 * d / (radius["a"] + radius["b"]))
    np.testing.assert_allclose(curve.value, expected, rtol=1e-7, equal_nan=True)
    assert (curve.value[1:] > 1).all()  # separate configurations: the tubes do not meet
    with pytest.raises(ValueError, match="group 'c'"):
        runs.normalised_distance("a", "c")


def test_riemann_lengths_against_plain_code(runs) -> None:
    lengths = runs.riemann_lengths()
    for t in runs.trajectories:
        P = t.probs.numpy()
        plain = sum(
            np.mean(np.arccos(np.clip(np.sqrt(P[k] * P[k + 1]).sum(-1), 0, 1)))
            for k in range(len(P) - 1)
        )
        assert lengths[t.name] == pytest.approx(plain, rel=1e-10)


def test_figures_stand_alone_and_tables_convert(runs) -> None:
    dist = runs.distances()
    fig, leaves = analysis.dendrogram_figure(dist.matrix, dist.names, dist.groups)
    assert isinstance(fig, Figure)
    assert sorted(leaves) == sorted(runs.names)
    tube = analysis.tube_figure(runs.tube_widths())
    assert isinstance(tube, Figure)
    assert len(tube.axes[0].collections) == 2  # one band per group
    speed = analysis.relative_speed_figure(
        runs.relative_speed(), dict(zip(runs.names, runs.groups))
    )
    assert speed.axes[0].get_yscale() == "log"
    comparison = runs.compare(figures=False)
    assert comparison.figure is None
    assert comparison.table.matrix.shape == (4, 4)
    d = dist.to_dict()
    assert d["run"].tolist() == runs.names
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pandas is needed"):
            dist.group_summary().to_pandas()
    else:
        assert dist.to_pandas().shape == (4, 4)
        assert list(dist.group_summary().to_pandas().columns)[:2] == ["group", "runs"]


def test_load_runs_bad_input_names_the_argument() -> None:
    lps, y = _runs()
    arrays = list(lps.values())
    with pytest.raises(ValueError, match="`labels`"):
        analysis.load_runs(arrays)
    with pytest.raises(ValueError, match=r"`source\[1\]`"):
        analysis.load_runs([arrays[0], arrays[1][:, :-1]], labels=y)
    with pytest.raises(ValueError, match="`names`"):
        analysis.load_runs(arrays[:2], labels=y, names=["x", "x"])
    with pytest.raises(ValueError, match=r"`source\[0\]` holds 1 valid snapshot"):
        analysis.load_runs([arrays[0][:1], arrays[1]], labels=y)


def test_readme_compare_runs_snippet_runs_as_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lps, y = _runs(1)
    for name, lp in lps.items():
        write_store(tmp_path / "runs", name, y, C, list(lp))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(_readme_block("Compare runs"), "README.md", "exec"), namespace)
    assert set(namespace["dist"].clusters(2)) == set(lps)
    assert (tmp_path / "dendrogram.png").read_bytes().startswith(b"\x89PNG")
    stress = namespace["stress"]
    assert ((stress.models > 0) & (stress.models <= 1)).all()
    assert "within" in printed.getvalue()
    assert torch.is_tensor(namespace["ref"].coords)
