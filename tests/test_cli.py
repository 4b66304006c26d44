"""The ``lightning-manifold`` command line on real stores written by short training runs.

Runs are trained once per module (``runs`` fixture) with the real ``ManifoldCallback``: two
seeds of configuration ``a`` (hidden width 16) and one of ``b`` (width 4), each with a train and
a val probe. Nothing about the store is mocked.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import TinyClassifier, fast_trainer_kwargs, make_blobs, make_loader
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform

from lightning_manifold import ManifoldCallback, ProbeSet, ReferenceEmbedding, Schedule
from lightning_manifold import functional as F
from lightning_manifold.cli import EXIT_USAGE, build_parser, main
from lightning_manifold.store import TrajectoryStore, list_stores

RUNS = {"a-seed0": (16, 0), "a-seed1": (16, 1), "b-seed0": (4, 0)}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _train(root: Path, run_name: str, hidden: int, seed: int, *, data_seed: int = 0) -> None:
    """One short real training run with the callback writing to ``root/run_name``."""
    x, y = make_blobs(192, 8, 3, seed=data_seed)
    xv, yv = make_blobs(64, 8, 3, seed=data_seed + 100)
    probes = [ProbeSet.from_tensors(x, y, name="train"), ProbeSet.from_tensors(xv, yv, name="val")]
    torch.manual_seed(seed)
    model = TinyClassifier(8, 3, hidden=hidden, lr=0.3, init_scale=0.1)
    callback = ManifoldCallback(
        probes, schedule=Schedule(log_spaced=8), dirpath=root, run_name=run_name
    )
    trainer = pl.Trainer(**fast_trainer_kwargs(max_epochs=3, callbacks=[callback]))
    trainer.fit(model, make_loader(x, y, batch_size=32))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/<run>/{train,val}`` for the runs of ``RUNS``."""
    root = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, (hidden, seed) in RUNS.items():
            _train(root, name, hidden, seed)
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.fixture(scope="module")
def other_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run recorded on a probe with other labels."""
    root = tmp_path_factory.mktemp("other")
    _train(root, "other", 16, 0, data_seed=7)
    return root


def _valid_count(root: Path, probe: str = "train") -> int:
    return sum(int(s.valid.sum()) for s in list_stores(root) if s.probe_name == probe)


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _plain_bhattacharyya(log_p: np.ndarray, log_q: np.ndarray) -> float:
    """-(1/N) sum_n log sum_c sqrt(p q), with plain numpy."""
    bc = np.exp(0.5 * (log_p.astype(np.float64) + log_q.astype(np.float64))).sum(axis=1)
    return float(-np.mean(np.log(bc)))


def _run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------------- parser


def test_every_option_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"embed", "compare", "reference", "report", "inspect"}
    for name, subparser in sub.choices.items():
        for action in subparser._actions:
            if action.dest != "help":
                assert action.help, f"{name}: option {action.dest!r} has no help text"


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--group-by" in out
    assert "eq. 2.2.5" in out


# ----------------------------------------------------------------------------------- embed


def test_embed_writes_figures_and_coordinates(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run_main(["embed", str(runs), "-o", str(tmp_path), "--components", "4"], capsys)
    assert code == 0
    assert "explained stress" in out
    assert (tmp_path / "embedding.png").read_bytes().startswith(PNG_MAGIC)
    page = (tmp_path / "embedding.html").read_text(encoding="utf-8")
    assert "Plotly" in page
    assert "data:image/png;base64," in page
    rows = _read_csv(tmp_path / "coordinates.csv")
    header, body = rows[0], rows[1:]
    assert header == [
        "run", "probe", "step", "progress", "error", "distance_to_geodesic",
        "pc1", "pc2", "pc3", "pc4",
    ]  # fmt: skip
    assert len(body) == _valid_count(runs)  # one row per valid snapshot of the train probe
    assert {r[0] for r in body} == set(RUNS)
    assert {r[1] for r in body} == {"train"}
    summary = json.loads((tmp_path / "embedding.json").read_text())
    assert summary["runs"] == sorted(RUNS)
    assert len(summary["eigenvalues"]) == 4


def test_embed_columns_hold_progress_error_and_faithful_coordinates(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = TrajectoryStore(runs / "a-seed0" / "train")
    code, _, _ = _run_main(
        ["embed", str(store.path), "-o", str(tmp_path), "--components", "1000"], capsys
    )
    assert code == 0
    body = _read_csv(tmp_path / "coordinates.csv")[1:]
    lp = np.asarray(store.log_probs(), dtype=np.float64)  # (T, N, C)
    labels = store.labels
    assert [int(r[2]) for r in body] == store.steps[store.valid].tolist()
    # error: fraction of argmax != label, plain numpy
    np.testing.assert_allclose([float(r[4]) for r in body], (lp.argmax(-1) != labels).mean(1))
    progress = F.progress_from_log_probs(torch.from_numpy(lp), torch.from_numpy(labels))
    np.testing.assert_allclose([float(r[3]) for r in body], progress.numpy(), atol=1e-9)
    # all components kept: Minkowski squared distances reproduce d_B (eqs. 2.2.2, 2.2.7)
    X = np.array([[float(v) for v in r[6:]] for r in body])
    signs = np.sign(json.loads((tmp_path / "embedding.json").read_text())["eigenvalues"])
    for i, j in [(0, len(body) - 1), (1, 3), (2, len(body) // 2)]:
        minkowski = float(np.sum(signs * (X[i] - X[j]) ** 2))
        assert minkowski == pytest.approx(_plain_bhattacharyya(lp[i], lp[j]), rel=1e-5, abs=1e-9)


def test_embed_accepts_store_run_and_root_dirs_and_picks_the_probe(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["embed", str(runs / "a-seed0"), str(runs / "b-seed0" / "val"), "--probe", "val"]
    code, _, _ = _run_main([*argv, "-o", str(tmp_path)], capsys)
    assert code == 0
    body = _read_csv(tmp_path / "coordinates.csv")[1:]
    assert {r[0] for r in body} == {"a-seed0", "b-seed0"}
    assert {r[1] for r in body} == {"val"}
    assert len(body) == sum(
        int(TrajectoryStore(runs / r / "val").valid.sum()) for r in ("a-seed0", "b-seed0")
    )


# ----------------------------------------------------------------------------------- compare


def test_compare_writes_matrix_dendrogram_and_tubes(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run_main(["compare", str(runs), "-o", str(tmp_path), "--points", "50"], capsys)
    assert code == 0
    assert "top split" in out
    rows = _read_csv(tmp_path / "trajectory_distances.csv")
    names = rows[0][1:]
    assert sorted(names) == sorted(RUNS)
    assert [r[0] for r in rows[1:]] == names
    D = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert D.shape == (3, 3)
    np.testing.assert_allclose(D, D.T)
    np.testing.assert_allclose(np.diag(D), 0.0)
    assert (D[~np.eye(3, dtype=bool)] > 0).all()
    # one entry against the functional core called directly on the stores
    i, j = names.index("a-seed0"), names.index("b-seed0")
    trajs = []
    for name in ("a-seed0", "b-seed0"):
        store = TrajectoryStore(runs / name / "train")
        lp = torch.from_numpy(np.asarray(store.log_probs(), dtype=np.float64))
        trajs += [lp.exp(), F.progress_from_log_probs(lp, torch.from_numpy(store.labels))]
    assert D[i, j] == pytest.approx(float(F.trajectory_distance(*trajs, n_points=50)), rel=1e-9)

    assert (tmp_path / "dendrogram.png").read_bytes().startswith(PNG_MAGIC)
    summary = json.loads((tmp_path / "dendrogram.json").read_text())
    assert sorted(summary["leaves"]) == sorted(RUNS)  # dendrogram leaves = the runs
    expected = linkage(squareform(D, checks=False), method="average")
    np.testing.assert_allclose(np.array(summary["linkage"]), expected)
    assert summary["groups"] == [n.split("-")[0] for n in names]  # default: seed suffix dropped

    tubes = _read_csv(tmp_path / "tube_widths.csv")
    assert tubes[0] == ["group", "run", "progress", "tube_width"]
    assert {(r[0], r[1]) for r in tubes[1:]} == {("a", "a-seed0"), ("a", "a-seed1")}
    assert len(tubes[1:]) == 2 * 50
    assert all(float(r[3]) >= 0 for r in tubes[1:])


def test_compare_identical_runs_have_zero_distance_and_tube_width(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for copy in ("x", "y"):  # the same run under two roots: same run name, same snapshots
        shutil.copytree(runs / "a-seed0", tmp_path / "dup" / copy / "a-seed0")
    shutil.copytree(runs / "b-seed0", tmp_path / "dup" / "b-seed0")
    out_dir = tmp_path / "out"
    argv = ["compare", str(tmp_path / "dup"), "-o", str(out_dir), "--group-by", r"^(?:\w/)?(\w)-"]
    code, _, _ = _run_main(argv, capsys)
    assert code == 0
    rows = _read_csv(out_dir / "trajectory_distances.csv")
    names = rows[0][1:]
    assert sorted(names) == ["b-seed0", "x/a-seed0", "y/a-seed0"]  # made unique by the parent
    D = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert D[names.index("x/a-seed0"), names.index("y/a-seed0")] == pytest.approx(0.0, abs=1e-12)
    tubes = _read_csv(out_dir / "tube_widths.csv")[1:]
    assert {r[0] for r in tubes} == {"a"}
    np.testing.assert_allclose([float(r[3]) for r in tubes], 0.0, atol=1e-12)


# ----------------------------------------------------------------------------------- reference


def test_reference_then_inspect(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref_path = tmp_path / "ref.npz"
    argv = ["reference", str(runs / "a-seed0"), str(runs / "a-seed1"), "-o", str(ref_path)]
    code, out, _ = _run_main([*argv, "--components", "5"], capsys)
    assert code == 0
    assert str(ref_path) in out
    ref = ReferenceEmbedding.load(
        ref_path, labels=TrajectoryStore(runs / "b-seed0" / "train").labels
    )
    assert ref.run_names == ["a-seed0", "a-seed1"]
    assert ref.n_components == 5
    assert ref.num_models == _valid_count(runs / "a-seed0") + _valid_count(runs / "a-seed1")

    code, out, _ = _run_main(["inspect", str(ref_path)], capsys)
    assert code == 0
    assert "reference" in out
    assert "a-seed1" in out
    assert "explained stress" in out
    code, out, _ = _run_main(["inspect", str(ref_path), "--json"], capsys)
    info = json.loads(out)[0]
    assert info["kind"] == "reference"
    assert info["num_models"] == ref.num_models


# ----------------------------------------------------------------------------------- report


def test_report_is_one_self_contained_page(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page_path = tmp_path / "report.html"
    code, _, _ = _run_main(["report", str(runs), "-o", str(page_path), "--points", "30"], capsys)
    assert code == 0
    page = page_path.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") >= 5  # manifold, spectrum, progress x2, dendrogram
    assert "Plotly.newPlot" in page  # interactive map with plotly.js inlined
    # nothing fetched from the network: no external script, stylesheet or image
    assert re.search(r"<(script|link|img)\b[^>]*\b(src|href)=[\"']?https?:", page) is None
    assert "<table>" in page
    for name in RUNS:
        assert f"<td>{name}</td>" in page
    assert "Trajectory distances" in page
    assert "Spectrum" in page
    assert "Progress" in page


def test_one_run_report_says_why_it_has_no_comparison(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page_path = tmp_path / "one.html"
    code, out, _ = _run_main(["report", str(runs / "a-seed0"), "-o", str(page_path)], capsys)
    assert code == 0
    assert "no comparison section" in out
    page = page_path.read_text(encoding="utf-8")
    assert "Not shown: comparing trajectories" in page
    assert "this report holds 1 run" in page


def test_stress_at_any_k_clusters_and_no_figures(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["embed", str(runs), "-o", str(tmp_path / "e"), "--stress-at", "1,2,7", "--no-figures"]
    code, out, _ = _run_main(argv, capsys)
    assert code == 0
    models = re.search(r"models alone: +top 1: ([\d.]+)%, top 2: ([\d.]+)%, top 7: ([\d.]+)%", out)
    landmarks = re.search(r"with landmarks: top 1: ([\d.]+)%, top 2: [\d.]+%, top 7: ", out)
    assert models is not None
    assert landmarks is not None
    assert not (tmp_path / "e" / "embedding.png").exists()
    summary = json.loads((tmp_path / "e" / "embedding.json").read_text())
    assert set(summary["explained_stress_models"]) == {"1", "2", "7"}
    # models alone, plain: eq. 2.2.8 on the full spectrum of the models' d_B matrix
    lp = np.concatenate(
        [np.asarray(s.log_probs(valid_only=True), dtype=np.float64)
         for s in list_stores(runs) if s.probe_name == "train"]
    )  # fmt: skip
    m = lp.shape[0]
    D = np.array([[_plain_bhattacharyya(lp[i], lp[j]) for j in range(m)] for i in range(m)])
    L = np.eye(m) - 1.0 / m
    sq = np.sort(np.linalg.eigvalsh(-0.5 * L @ D @ L) ** 2)[::-1]
    for k, printed in zip((1, 2, 7), models.groups()):
        plain = 1 - np.sqrt(sq[k:].sum() / sq.sum())
        assert summary["explained_stress_models"][str(k)] == pytest.approx(plain, rel=1e-4)
        assert float(printed) == pytest.approx(100 * plain, abs=0.051)

    argv = ["compare", str(runs), "-o", str(tmp_path / "c"), "--clusters", "2", "--no-figures"]
    code, out, _ = _run_main(argv, capsys)
    assert code == 0
    assert "2 clusters (average linkage):" in out
    assert "within a group" in out
    assert not (tmp_path / "c" / "dendrogram.png").exists()
    info = json.loads((tmp_path / "c" / "dendrogram.json").read_text())
    assert sorted(set(info["clusters"].values())) == [1, 2]
    groups = _read_csv(tmp_path / "c" / "groups.csv")
    assert groups[0] == ["group", "runs", "within", "between", "ratio"]
    assert {r[0] for r in groups[1:]} == {"a", "b"}


# ----------------------------------------------------------------------------------- inspect


def test_inspect_stores(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run_main(["inspect", str(runs), "--json"], capsys)
    assert code == 0
    infos = json.loads(out)
    assert len(infos) == 2 * len(RUNS)
    for info in infos:
        store = TrajectoryStore(info["path"])
        assert info["run"] == store.run_name
        assert info["probe"] == store.probe_name
        assert (info["num_samples"], info["num_classes"]) == (store.num_samples, 3)
        assert info["snapshots"] == len(store)
        assert info["valid"] == int(store.valid.sum())
        assert info["steps"] == [0, int(store.steps[-1])]
    code, out, _ = _run_main(["inspect", str(runs / "b-seed0" / "val")], capsys)
    assert code == 0
    assert "run 'b-seed0', probe 'val': N=64 C=3" in out


# ----------------------------------------------------------------------------------- errors


def _assert_usage_error(code: int, err: str, *fragments: str) -> None:
    assert code == EXIT_USAGE
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    for command in ("embed", "compare", "report", "inspect"):
        code, _, err = _run_main([command, str(missing)], capsys)
        _assert_usage_error(code, err, command, str(missing), "does not exist")
    code, _, err = _run_main(["reference", str(missing), "-o", str(tmp_path / "r.npz")], capsys)
    _assert_usage_error(code, err, "does not exist")


def test_directory_without_stores_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run_main(["embed", str(tmp_path)], capsys)
    _assert_usage_error(code, err, "no trajectory store")


def test_mismatched_probes_exit_2(
    runs: Path, other_probe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("embed", "compare"):
        argv = [command, str(runs / "a-seed0"), str(other_probe), "-o", str(tmp_path)]
        code, _, err = _run_main(argv, capsys)
        _assert_usage_error(code, err, "mismatched probes", "labels differ")


def test_empty_store_exits_2(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = TrajectoryStore(runs / "a-seed0" / "train").labels
    TrajectoryStore.create(
        tmp_path / "empty" / "train", labels=labels, num_classes=3, probe_name="train",
        run_name="empty",
    )  # fmt: skip
    code, _, err = _run_main(["embed", str(tmp_path / "empty")], capsys)
    _assert_usage_error(code, err, "0 valid snapshot")


def test_probe_and_run_count_errors_exit_2(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run_main(["embed", str(runs), "--probe", "test"], capsys)
    _assert_usage_error(code, err, "--probe 'test'", "['train', 'val']")
    code, _, err = _run_main(["compare", str(runs / "a-seed0"), "-o", str(tmp_path)], capsys)
    _assert_usage_error(code, err, "at least 2 runs")
    not_a_ref = tmp_path / "x.npz"
    np.savez(not_a_ref, a=np.zeros(3))
    code, _, err = _run_main(["inspect", str(not_a_ref)], capsys)
    _assert_usage_error(code, err, "not a reference embedding")
    code, _, err = _run_main(["compare", str(runs), "--group-by", "(", "-o", str(tmp_path)], capsys)
    _assert_usage_error(code, err, "--group-by")


def test_python_dash_m_entry_point(runs: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    ok = subprocess.run(
        [sys.executable, "-m", "lightning_manifold", "inspect", str(runs / "a-seed0")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "run 'a-seed0', probe 'train'" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "lightning_manifold", "embed", str(tmp_path / "missing")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0
    assert "Traceback" not in bad.stderr
