"""The command line's figure worker, the lazily re-indexed progress grids of a fit, and the
report's single projection of every model (issue 13's speed work).

Stores are written directly (no training): each run's logits move from ignorance towards a
run-specific direction, so runs differ, progress rises and every figure has something to draw.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_manifold import analysis
from lightning_manifold import functional as F
from lightning_manifold._figure_worker import (
    FigureWorker,
    _frame,
    frame_payload,
    read_payload,
    write_payload,
)
from lightning_manifold.cli import main
from lightning_manifold.embedding import ReferenceEmbedding
from lightning_manifold.store import TrajectoryStore, store_path

N, C, T = 60, 4, 6
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three runs (two seeds of ``a``, one of ``b``) of T snapshots on one probe."""
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    y = rng.integers(0, C, N)
    for run in ("a-seed0", "a-seed1", "b-seed0"):
        direction = 3 * np.eye(C)[y] + rng.normal(size=(N, C))
        store = TrajectoryStore.create(
            store_path(root, run, "train"), labels=y, num_classes=C, probe_name="train",
            run_name=run, durable=False,
        )  # fmt: skip
        for t in range(T):
            z = (t + 1) / T * direction + 0.05 * rng.normal(size=(N, C))
            lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
            store.append(lp.astype(np.float32), step=10 * (t + 1), epoch=0)
    return root


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["embed", "compare"])
def test_worker_draws_the_same_pictures_as_the_command_itself(
    command: str,
    runs: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    extra = ["--clusters", "2"] if command == "compare" else []
    with_worker = _cli([command, str(runs), "-o", str(tmp_path / "worker"), *extra], capsys)
    monkeypatch.setenv("LIGHTNING_MANIFOLD_FIGURE_WORKER", "0")
    here = _cli([command, str(runs), "-o", str(tmp_path / "here"), *extra], capsys)
    # the same files, listed in the same order (paths aside)
    assert with_worker.replace(str(tmp_path / "worker"), "") == here.replace(
        str(tmp_path / "here"), ""
    )
    pngs = sorted(p.name for p in (tmp_path / "here").glob("*.png"))
    assert pngs == (
        ["embedding.png"] if command == "embed" else ["dendrogram.png", "tube_widths.png"]
    )
    for name in pngs:  # same matplotlib, same data: the same pixels, byte for byte
        drawn = (tmp_path / "worker" / name).read_bytes()
        assert drawn.startswith(PNG_MAGIC)
        assert drawn == (tmp_path / "here" / name).read_bytes(), name
    if command == "embed":
        page = (tmp_path / "worker" / "embedding.html").read_text(encoding="utf-8")
        assert "data:image/png;base64," in page


def test_a_failing_worker_leaves_the_figures_to_the_command(
    runs: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken(self: FigureWorker, timeout: float | None = None) -> dict[str, Path]:
        self.close()
        raise RuntimeError("figure worker failed: simulated")

    monkeypatch.setattr(FigureWorker, "result", broken)
    out = _cli(["compare", str(runs), "-o", str(tmp_path)], capsys)
    assert "dendrogram.png" in out
    assert (tmp_path / "dendrogram.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "tube_widths.png").read_bytes().startswith(PNG_MAGIC)


def test_a_worker_that_died_leaves_the_figures_to_the_command(
    runs: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    start = FigureWorker.__init__

    def dead(self: FigureWorker, kind: str) -> None:
        start(self, kind)
        self.proc.kill()  # its stdin breaks when the command sends the first job
        self.proc.wait()

    monkeypatch.setattr(FigureWorker, "__init__", dead)
    out = _cli(["embed", str(runs), "-o", str(tmp_path), "--no-landmarks"], capsys)
    assert "embedding.png" in out
    assert (tmp_path / "embedding.png").read_bytes().startswith(PNG_MAGIC)


def test_worker_reports_a_bad_job_instead_of_hanging(tmp_path: Path) -> None:
    worker = FigureWorker("none")
    try:
        worker.send("no-such-job", {"x": np.zeros(3)}, {"out_dir": str(tmp_path)})
        with pytest.raises(RuntimeError, match="unknown figure job 'no-such-job'"):
            worker.result(timeout=120)
    finally:
        worker.close()
    assert worker.proc.returncode == 1


def test_frame_payload_round_trip(runs: Path, tmp_path: Path) -> None:
    stores = analysis.resolve_stores([runs])
    names = analysis.run_names(stores)
    ref = analysis.embed_stores(stores, names, n_components=4)
    frame = analysis.embedding_frame(ref, groups=analysis.run_groups(stores, names))
    arrays, header = frame_payload(frame)
    write_payload(tmp_path / "frame.npz", arrays, header)
    back = _frame(*read_payload(tmp_path / "frame.npz"))
    for f in dataclasses.fields(frame):
        a, b = getattr(frame, f.name), getattr(back, f.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype, f.name
            assert np.array_equal(a, b), f.name
        else:
            assert a == b, f.name
    assert back.ref_run_groups == ["a", "a", "b"]  # type: ignore[attr-defined]


def test_fit_reindexes_its_progress_grids_on_first_use(runs: Path) -> None:
    stores = analysis.resolve_stores([runs])
    ref = analysis.embed_stores(stores, n_components=3)
    assert ref._grids is None  # a map that is only drawn never re-indexes
    grid, grid_sqrt, valid = ref.grid, ref.grid_sqrt, ref.grid_valid
    assert ref._grids is not None
    for r, store in enumerate(stores):  # against the functional core run by run
        lp = torch.from_numpy(np.asarray(store.log_probs(valid_only=True), dtype=np.float64))
        prog = ref.model_progress[ref.model_run == r]
        expected = torch.linspace(
            float(prog[0]), float(prog.max()), grid.shape[1], dtype=torch.float64
        )
        assert torch.equal(grid[r], expected)
        probs, ok = F.reindex_by_progress(lp.exp(), prog, expected)
        assert torch.equal(valid[r], ok)
        root = probs.sqrt().to(torch.float32).clamp_min(torch.finfo(torch.float32).tiny)
        assert torch.equal(grid_sqrt[r][ok], root[ok])
    assert ref.model_at_progress(0, float(grid[0, 3])) is not None


def test_saved_pickled_and_copied_references_hold_the_lazy_grids(
    runs: Path, tmp_path: Path
) -> None:
    fitted = [ReferenceEmbedding.fit(analysis.resolve_stores([runs]), n_components=3)
              for _ in range(3)]  # fmt: skip
    copies = [
        ReferenceEmbedding.load(fitted[0].save(tmp_path / "ref.npz")),
        pickle.loads(pickle.dumps(fitted[1])),  # e.g. handed to a spawned process
        copy.deepcopy(fitted[2]),
    ]
    for ref, back in zip(fitted, copies):
        assert torch.equal(back.grid, ref.grid)
        assert torch.equal(back.grid_sqrt, ref.grid_sqrt)
        assert torch.equal(back.grid_valid, ref.grid_valid)


def test_report_projects_every_model_once(
    runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    project = F.geodesic_projection_from_log_probs
    progress = F.progress_from_log_probs

    def counted(log_p, labels, **kw):  # type: ignore[no-untyped-def]
        calls.append(int(torch.as_tensor(log_p).reshape(-1, N, C).shape[0]))
        return project(log_p, labels, **kw)

    def refused(*args, **kw):  # type: ignore[no-untyped-def]
        raise AssertionError("progress computed a second time")

    monkeypatch.setattr(F, "geodesic_projection_from_log_probs", counted)
    monkeypatch.setattr(F, "progress_from_log_probs", refused)
    page = analysis.report_html(analysis.resolve_stores([runs]), n_components=3)
    assert calls == [3 * T]  # the map's projection of all models, nothing else
    monkeypatch.setattr(F, "progress_from_log_probs", progress)
    stores = analysis.resolve_stores([runs])
    for store in stores:  # the table's final progress is the store's last snapshot's
        lp = torch.from_numpy(np.asarray(store.log_probs(valid_only=True)[-1], dtype=np.float64))
        final = float(progress(lp, torch.from_numpy(store.labels)))
        assert f"<td>{final:.3f}</td>" in page
