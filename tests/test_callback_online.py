"""ManifoldCallback wired to the online module, reference embeddings and figure sinks.

Real Lightning training on generated data; everything is read back from what was written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import (
    MemoryLogger,
    TinyClassifier,
    fast_trainer_kwargs,
    make_blobs,
    make_loader,
    probe_blobs,
)
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_manifold import ManifoldCallback, ProbeSet, ReferenceEmbedding, Schedule
from lightning_manifold.online import OnlineManifold
from lightning_manifold.store import TrajectoryStore


def _probe(n: int = 60) -> ProbeSet:
    x, y = probe_blobs(n)  # held-out samples of the training task
    return ProbeSet.from_tensors(x, y, name="train")


def _fit(callbacks: list[Any], *, seed: int = 0, max_steps: int = 30, **kw: Any) -> pl.Trainer:
    pl.seed_everything(seed, verbose=False)
    x, y = make_blobs(256, 8, 3, seed=0)
    trainer = pl.Trainer(**fast_trainer_kwargs(max_steps=max_steps, **kw), callbacks=callbacks)
    trainer.fit(TinyClassifier(), make_loader(x, y, batch_size=32))
    return trainer


def test_online_scalars_are_logged_and_match_an_offline_replay(tmp_path: Path) -> None:
    logger = MemoryLogger()
    cb = ManifoldCallback(
        _probe(),
        schedule=Schedule(log_spaced=None, every_n_steps=5),
        dirpath=tmp_path,
        run_name="r",
        plots=False,
    )
    _fit([cb], logger=logger)
    records = logger.metrics_with_prefix("manifold/train/")
    last = records[-1][1]
    for key in ("pc1", "pc2", "pc3", "residual", "progress_class_0", "progress_class_2"):
        assert f"manifold/train/{key}" in last
    # The same store replayed offline through a fresh OnlineManifold gives the same numbers.
    store = TrajectoryStore(tmp_path / "r" / "train")
    offline = OnlineManifold(store.labels, store.num_classes, n_components=3, probe="train")
    offline.replay(store)
    final = offline.results[-1].scalars()
    for key in ("pc1", "pc2", "pc3", "residual", "progress_class_1"):
        assert last[f"manifold/train/{key}"] == pytest.approx(final[key], rel=1e-4, abs=1e-6)
    # The basic scalars keep the callback's values (not overwritten by the online module).
    stored = store.records[-1]["metrics"]
    assert last["manifold/train/progress"] == stored["progress"]


def test_no_logger_writes_png_html_and_csv_next_to_the_store(tmp_path: Path) -> None:
    cb = ManifoldCallback(_probe(), schedule=Schedule(log_spaced=8), dirpath=tmp_path, run_name="r")
    _fit([cb], logger=False)
    run = tmp_path / "r"
    png, html, csv = (
        run / "manifold_train.png",
        run / "manifold_train.html",
        run / "manifold_train_coordinates.csv",
    )
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = html.read_text()
    assert "plotly" in text.lower()
    assert "<script src=" not in text  # self-contained
    rows = csv.read_text().strip().splitlines()
    assert len(rows) > len(TrajectoryStore(run / "train"))  # header + live rows (+ landmarks)


def test_tensorboard_gets_scalars_and_figures(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(save_dir=tmp_path, name="tb")
    cb = ManifoldCallback(_probe(), schedule=Schedule(log_spaced=6))
    _fit([cb], logger=logger)
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "manifold/train/pc1" in tags["scalars"]
    assert "manifold/train/progress" in tags["scalars"]
    assert any(t.startswith("manifold/train") for t in tags["images"]), tags["images"]
    final_step = max(e.step for e in acc.Scalars("manifold/train/progress"))
    image_steps = {e.step for t in tags["images"] for e in acc.Images(t)}
    assert final_step in image_steps  # the final picture is always drawn


def test_finished_run_becomes_the_reference_of_the_next(tmp_path: Path) -> None:
    base = ManifoldCallback(
        _probe(),
        schedule=Schedule(log_spaced=10),
        dirpath=tmp_path,
        run_name="base",
        save_reference=True,
        plots=False,
    )
    _fit([base], seed=0, max_steps=40, logger=False)
    ref_path = Path(base.reference_paths["train"])
    assert ref_path.is_file()
    reference = ReferenceEmbedding.load(ref_path)
    assert reference.num_runs == 1

    logger = MemoryLogger()
    second = ManifoldCallback(
        _probe(),
        schedule=Schedule(log_spaced=10),
        dirpath=tmp_path,
        run_name="second",
        reference=ref_path,
        plots=False,
    )
    _fit([second], seed=1, max_steps=40, logger=logger)
    records = logger.metrics_with_prefix("manifold/train/")
    with_ref = [m for _, m in records if "manifold/train/reference_distance" in m]
    assert with_ref, "no reference distance was logged"
    assert all(np.isfinite(m["manifold/train/reference_distance"]) for m in with_ref)
    assert any("manifold/train/relative_speed" in m for m in with_ref)
    # The same configuration with another seed stays close to its baseline: much closer than
    # the baseline's own start is to its end.
    store = TrajectoryStore(tmp_path / "base" / "train")
    lp = torch.as_tensor(np.asarray(store.log_probs()[:]), dtype=torch.float64)
    from lightning_manifold import functional as F

    span = float(F.bhattacharyya_from_log_probs(lp[0], lp[-1]))
    assert np.median([m["manifold/train/reference_distance"] for m in with_ref]) < 0.5 * span


def test_reference_of_another_probe_is_refused_at_start(tmp_path: Path) -> None:
    base = ManifoldCallback(
        _probe(n=60),
        schedule=Schedule(log_spaced=5),
        dirpath=tmp_path,
        run_name="base",
        save_reference=True,
        plots=False,
    )
    _fit([base], max_steps=10, logger=False)
    other = ManifoldCallback(
        _probe(n=40),
        schedule=Schedule(log_spaced=5),
        dirpath=tmp_path,
        run_name="other",
        reference=base.reference_paths["train"],
        plots=False,
    )
    with pytest.raises(ValueError, match=r"N|labels|probe"):
        _fit([other], max_steps=10, logger=False)


def test_reference_arguments_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="`reference`"):
        ManifoldCallback(_probe(), reference=tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="`reference` keys"):
        ManifoldCallback(_probe(), reference={"val": tmp_path / "x.npz"})
    with pytest.raises(ValueError, match="`n_components`"):
        ManifoldCallback(_probe(), n_components=0)
    with pytest.raises(ValueError, match="`render_budget`"):
        ManifoldCallback(_probe(), render_budget=0)
