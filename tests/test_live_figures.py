"""The live picture during training: drawn off the training thread, newest frame wins, read back
from TensorBoard and an offline W&B run written by real (tiny) Lightning runs."""

from __future__ import annotations

import glob
import io
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
from _frames import make_frame
from conftest import TinyClassifier, fast_trainer_kwargs, make_blobs, make_loader, probe_blobs
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.colors import to_rgb
from PIL import Image

from lightning_manifold import ManifoldCallback, ProbeSet, Schedule, plots_live
from lightning_manifold import callback as callback_module
from lightning_manifold.frame import ManifoldFrame
from lightning_manifold.sinks import Renders, RenderWorker, Sink, frozen_copy
from lightning_manifold.sinks import worker as worker_module


def _probe(name: str = "train", n: int = 48) -> ProbeSet:
    x, y = probe_blobs(n)
    return ProbeSet.from_tensors(x, y, name=name)


def _fit(callback: ManifoldCallback, logger: Any, *, max_steps: int = 24) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    x, y = make_blobs(256, 8, 3, seed=0)
    trainer = pl.Trainer(
        **fast_trainer_kwargs(max_steps=max_steps, logger=logger), callbacks=[callback]
    )
    trainer.fit(TinyClassifier(), make_loader(x, y, batch_size=32))
    return trainer


class EveryCaptureCallback(ManifoldCallback):
    """Waits for the drawing thread after each submission: with ``render_budget=1`` every
    capture is then drawn, which makes the number of figures deterministic."""

    def _render(self, step: int, *, force: bool = False) -> None:
        super()._render(step, force=force)
        if self._sinks is not None and not force:
            assert self._sinks.wait(timeout=60.0)


# ----------------------------------------------------------------------------- the picture


def test_live_image_draws_truth_ignorance_and_the_newest_point() -> None:
    frame = make_frame(n_ref_runs=2, snapshots_per_run=6, n_live=12)
    pixels = plots_live.live_image(frame)
    w, h = plots_live.LIVE_SIZE
    assert pixels.shape == (h, w, 3)
    assert pixels.dtype == np.uint8
    red = np.round(np.array(to_rgb("#d62728")) * 255)
    near_red = (np.abs(pixels.astype(float) - red).sum(axis=-1) < 60).sum()
    assert near_red > 40  # the P* star and the ring around the newest snapshot
    # without the live run, the newest-point ring and the trajectory disappear
    empty = frozen_copy(frame)
    empty = ManifoldFrame(
        **{
            **empty.__dict__,
            "live_coords": np.zeros((0, frame.live_coords.shape[1])),
            "live_steps": np.zeros(0, dtype=np.int64),
            "live_progress": np.zeros(0),
            "live_error": np.zeros(0),
            "live_geodesic_distance": np.zeros(0),
            "live_reference_distance": np.zeros(0),
        }
    )
    fewer = (np.abs(plots_live.live_image(empty).astype(float) - red).sum(-1) < 60).sum()
    assert 0 < fewer < near_red
    assert plots_live.live_png(frame)[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="`size`"):
        plots_live.live_image(frame, size=(10, 10))


def test_frozen_copy_shares_no_memory_and_is_read_only() -> None:
    frame = make_frame(n_ref_runs=1, snapshots_per_run=4, n_live=5)
    copy = frozen_copy(frame)
    for name, value in frame.__dict__.items():
        if isinstance(value, np.ndarray):
            assert not np.shares_memory(value, getattr(copy, name)), name
            np.testing.assert_array_equal(value, getattr(copy, name))
            assert not getattr(copy, name).flags.writeable
    frame.live_coords[0, 0] += 1.0  # the training side keeps updating its arrays
    assert copy.live_coords[0, 0] != frame.live_coords[0, 0]


# ----------------------------------------------------------------------------- the worker


class GatedSink(Sink):
    """Blocks in ``log_frames`` until released; records what it drew."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()
        self.steps: list[int] = []
        self.active = False

    def log_frames(self, batch: Sequence[tuple[ManifoldFrame, Renders]], step: int) -> None:
        self.active = True
        self.started.set()
        assert self.release.wait(30.0)
        self.steps.append(step)
        self.active = False

    def log_frame(self, frame: ManifoldFrame, step: int, renders: Renders | None = None) -> None:
        raise AssertionError("log_frames is used")


def test_a_slow_sink_never_blocks_submission_and_the_newest_frame_wins() -> None:
    frame = make_frame(n_ref_runs=0, snapshots_per_run=2, n_live=4)
    sink = GatedSink()
    worker = RenderWorker([sink], budget=None)
    worker.submit([frame], 1)
    assert sink.started.wait(30.0)  # step 1 is being drawn and blocks
    for step in (2, 3, 4):
        worker.submit([frame], step)
        assert sink.active
        assert sink.steps == []
    assert worker.dropped == 2  # 2 and 3 were replaced before the worker was free
    sink.release.set()
    assert worker.wait(timeout=30.0)
    assert sink.steps == [1, 4]
    worker.submit([frame], 5, final=True)
    worker.submit([frame], 6)  # a live frame never replaces the pending final one ...
    assert worker.close(timeout=30.0)
    assert sink.steps[-1] == 5  # ... which is drawn at close, the stale live frame dropped
    assert worker.drawn_steps == [1, 4, 5]


def test_close_abandons_drawing_after_the_timeout() -> None:
    frame = make_frame(n_ref_runs=0, snapshots_per_run=2, n_live=3)
    sink = GatedSink()
    worker = RenderWorker([sink], budget=None)
    worker.submit([frame], 7, final=True)
    assert sink.started.wait(30.0)
    t0 = time.perf_counter()
    assert not worker.close(timeout=0.2)  # the final picture is still being drawn
    assert time.perf_counter() - t0 < 10.0
    sink.release.set()


def test_close_drops_a_live_frame_that_waits_for_the_budget() -> None:
    frame = make_frame(n_ref_runs=0, snapshots_per_run=2, n_live=3)
    sink = RecordingSink()
    worker = RenderWorker([sink], budget=1e-9)
    worker.submit([frame], 1)
    deadline = time.monotonic() + 30.0
    while not sink.calls and time.monotonic() < deadline:  # the first frame is drawn at once
        time.sleep(0.01)
    worker.submit([frame], 2)  # the next one would fit the budget only after years
    time.sleep(0.05)
    assert worker.close(timeout=30.0)
    assert [c[1] for c in sink.calls] == [1]
    assert worker.dropped == 1
    assert worker.errors == []


class FailingSink(Sink):
    def __init__(self, thread_safe: bool) -> None:
        super().__init__()
        self.thread_safe = thread_safe

    def log_frame(self, frame: ManifoldFrame, step: int, renders: Renders | None = None) -> None:
        raise RuntimeError("disk full")


class RecordingSink(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int, str]] = []

    def log_frame(self, frame: ManifoldFrame, step: int, renders: Renders | None = None) -> None:
        self.calls.append((frame.probe, step, threading.current_thread().name))


def test_sink_failures_never_reach_the_training_thread() -> None:
    frame = make_frame(n_ref_runs=0, snapshots_per_run=2, n_live=3)
    good, deferred = RecordingSink(), RecordingSink()
    deferred.thread_safe = False  # its logger call is handed back to the training thread
    worker = RenderWorker([FailingSink(True), FailingSink(False), good, deferred], budget=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in (1, 2):
            worker.submit([frame], step)
            assert worker.wait(timeout=30.0)
            worker.deliver()  # the deferred failing sink raises here: caught, warned once
        assert worker.close(timeout=30.0)
    failures = [str(w.message) for w in caught if "FailingSink failed" in str(w.message)]
    assert len(failures) == 2  # once per failing sink, on either thread
    assert all("disk full" in m for m in failures)
    assert worker.errors == []
    assert [c[:2] for c in good.calls] == [("train", 1), ("train", 2)]
    assert {c[2] for c in good.calls} == {"lightning-manifold-render"}
    assert {c[2] for c in deferred.calls} == {threading.current_thread().name}


# ----------------------------------------------------------------------------- real runs


def test_every_capture_reaches_tensorboard_with_probe_names(tmp_path: Path, monkeypatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setattr(worker_module, "FULL_COST_PRIOR_S", 1e9)  # no detailed figures: faster

    logger = TensorBoardLogger(save_dir=tmp_path, name="tb")
    probes = [_probe("train"), _probe("holdout")]
    cb = EveryCaptureCallback(
        probes, schedule=Schedule(log_spaced=None, every_n_steps=6), render_budget=1.0
    )
    _fit(cb, logger)
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    captured = sorted({e.step for e in acc.Scalars("manifold/train/progress")})
    assert captured == [0, 6, 12, 18, 24]
    for probe in ("train", "holdout"):
        live = acc.Images(f"manifold/{probe}/live")
        assert sorted({e.step for e in live}) == captured  # one live picture per capture
        assert live[-1].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
        assert (live[-1].width, live[-1].height) == plots_live.LIVE_SIZE
        with Image.open(io.BytesIO(live[-1].encoded_image_string)) as png:  # the stored PNG
            assert (png.size, png.mode) == (plots_live.LIVE_SIZE, "RGB")
        # the mesh card names its probe
        meta = acc.SummaryMetadata(f"manifold/{probe}/cloud_VERTEX")
        assert probe in meta.display_name
        assert probe in meta.summary_description
    # the detailed figures did not fit the budget: the live picture is the final one
    assert not any(t.endswith("/spectrum") for t in acc.Tags()["images"])


def test_default_settings_draw_the_first_and_the_final_step(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(save_dir=tmp_path, name="tb")
    cb = ManifoldCallback(_probe(), schedule=Schedule(log_spaced=8))
    _fit(cb, logger)
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    final = max(e.step for e in acc.Scalars("manifold/train/progress"))
    steps = {e.step for e in acc.Images("manifold/train/live")}
    assert {0, final} <= steps  # step 0 at once (cheap), the final picture always
    assert cb._sinks is None  # the worker was closed at the end of fit


class SlowStepClassifier(TinyClassifier):
    """A training step of at least 25 ms (tiny models train faster than real ones)."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        time.sleep(0.025)
        return super().training_step(batch, batch_idx)


def test_a_short_run_with_default_settings_updates_the_live_picture(tmp_path: Path) -> None:
    """Default drawing budget (2% of the training time) in a ~12 s run: the live picture arrives
    at several distinct steps during training, not only at the first and the last. (A render of
    one probe costs 30-60 ms of CPU, so the budget allows the second at about 6 s, then one
    every 2-3 s.)"""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(save_dir=tmp_path, name="tb")
    cb = ManifoldCallback(_probe(), schedule=Schedule(log_spaced=None, every_n_steps=10))
    pl.seed_everything(0, verbose=False)
    x, y = make_blobs(256, 8, 3, seed=0)
    trainer = pl.Trainer(**fast_trainer_kwargs(max_steps=360, logger=logger), callbacks=[cb])
    start = time.perf_counter()
    trainer.fit(SlowStepClassifier(), make_loader(x, y, batch_size=32))
    seconds = time.perf_counter() - start
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    captured = {e.step for e in acc.Scalars("manifold/train/progress")}
    live = sorted({e.step for e in acc.Images("manifold/train/live")})
    assert set(live) <= captured
    during = [s for s in live if 0 < s < 360]
    assert len(during) >= 2, (live, seconds)  # besides step 0 and the final picture


def test_slow_and_failing_sinks_do_not_hold_up_training(tmp_path: Path, monkeypatch) -> None:
    sink = GatedSink()
    failing = [FailingSink(thread_safe=True), FailingSink(thread_safe=False)]
    monkeypatch.setattr(callback_module, "sinks_for_loggers", lambda *a, **k: [sink, *failing])
    returned_while_drawing: list[bool] = []

    class Probe(ManifoldCallback):
        def _render(self, step: int, *, force: bool = False) -> None:
            worker = self._sinks
            super()._render(step, force=force)
            if worker is not None and not force:
                if step == 0:
                    assert sink.started.wait(30.0)  # the worker now draws step 0 and blocks
                returned_while_drawing.append(sink.active)
            if force:
                sink.release.set()  # let the drawing finish only once training is over

    cb = Probe(_probe(), schedule=Schedule(log_spaced=None, every_n_steps=2), render_budget=1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(cb, logger=False, max_steps=16)
    assert trainer.global_step == 16  # the sinks' exceptions never reached training
    assert sum("FailingSink failed" in str(w.message) for w in caught) == 2
    # the first capture's drawing blocked until the end; every later capture still went on
    assert len(returned_while_drawing) == 9
    assert all(returned_while_drawing[1:])
    assert sink.steps[0] == 0
    assert sink.steps[-1] == 16
    assert len(sink.steps) == 2  # the frames submitted while step 0 was drawn were dropped


def test_wandb_offline_run_holds_live_media_at_every_capture(tmp_path: Path, monkeypatch) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setattr(worker_module, "FULL_COST_PRIOR_S", 1e9)
    from lightning.pytorch.loggers import WandbLogger
    from test_sinks import _wandb_history

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="lm-live")
    cb = EveryCaptureCallback(
        _probe(), schedule=Schedule(log_spaced=None, every_n_steps=8), render_budget=1.0
    )
    try:
        _fit(cb, logger)
    finally:
        wandb.finish()
    run = Path(glob.glob(str(tmp_path / "**" / "offline-run-*"), recursive=True)[0])
    rows = _wandb_history(next(run.glob("*.wandb")))
    media_steps = [
        int(r["trainer/global_step"])
        for r in rows
        if any(k.startswith("manifold/train/live") for k in r)
    ]
    scalar_steps = [int(r["trainer/global_step"]) for r in rows if "manifold/train/progress" in r]
    assert sorted(set(scalar_steps)) == [0, 8, 16, 24]
    assert sorted(set(media_steps)) == [0, 8, 16, 24]  # no row was dropped
    # the media of a capture are logged after the scalars of the next one (delivered on the
    # training thread at that capture): W&B keeps them at their own trainer/global_step
    order = [
        int(r["trainer/global_step"])
        for r in rows
        if "manifold/train/progress" in r or any(k.startswith("manifold/train/live") for k in r)
    ]
    assert order != sorted(order)
    images = sorted((run / "files" / "media" / "images" / "manifold" / "train").glob("live_*.png"))
    assert len(images) >= 4
    for path in images:  # copies of the PNG shared with TensorBoard, whole
        with Image.open(path) as png:
            assert png.size == plots_live.LIVE_SIZE
            png.load()
