"""Sinks: what TensorBoard, W&B (offline) and files receive, read back from disk; throttling;
optional packages missing."""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import re
import struct
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from _frames import make_frame
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from lightning_manifold import _optional
from lightning_manifold.frame import ManifoldFrame
from lightning_manifold.sinks import (
    FilesSink,
    Renders,
    RenderThrottle,
    Sink,
    SinkGroup,
    TensorBoardSink,
    WandbSink,
    coordinate_table,
    sinks_for_loggers,
)

DPI = 30


@pytest.fixture(scope="module")
def frame() -> ManifoldFrame:
    return make_frame(n_ref_runs=2, snapshots_per_run=8, n_live=8)


def _group(sinks: list[Sink]) -> SinkGroup:
    return SinkGroup(
        sinks, throttle=RenderThrottle(max_fraction_of_time=None), dpi=DPI, strict=True
    )


# ---------------------------------------------------------------------------------------------
# optional imports


def test_require_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _optional.require("json") is json
    monkeypatch.setitem(sys.modules, "plotly", None)
    assert not _optional.is_available("plotly")
    assert not _optional.is_available("plotly.graph_objects")
    with pytest.raises(ModuleNotFoundError) as info:
        _optional.require("plotly", "plotly")
    assert str(info.value) == (
        "plotly is needed for interactive 3D plots: pip install 'lightning-manifold[plotly]'"
    )
    assert info.value.name == "plotly"
    with pytest.raises(ImportError, match=r"pip install 'lightning-manifold\[foo\]'"):
        _optional.require("definitely_not_a_module_xyz", "foo")
    assert not _optional.is_available("definitely_not_a_module_xyz")
    assert _optional.is_available("json")
    assert "lightning-manifold[wandb]" in _optional.missing_message("wandb")
    assert "lightning-manifold[tensorboard]" in _optional.missing_message("tensorboard")


# ---------------------------------------------------------------------------------------------
# throttle


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttle_every_n_captures() -> None:
    throttle = RenderThrottle(every_n_captures=3, max_fraction_of_time=None, clock=FakeClock())
    decisions = [throttle.should_render() for _ in range(8)]
    assert decisions == [True, False, False, True, False, False, True, False]
    assert throttle.should_render(force=True)
    assert throttle.state()["skipped"] == 5


def test_throttle_min_interval() -> None:
    clock = FakeClock()
    throttle = RenderThrottle(min_interval_s=10.0, max_fraction_of_time=None, clock=clock)
    got = []
    for t in (0.0, 4.0, 9.0, 10.5, 12.0, 30.0):
        clock.now = t
        got.append(throttle.should_render())
    assert got == [True, False, False, True, False, True]


def test_throttle_time_budget() -> None:
    """Cumulative render time never exceeds the budget fraction of elapsed time."""
    clock = FakeClock()
    throttle = RenderThrottle(max_fraction_of_time=0.1, clock=clock)
    rendered = 0
    for _ in range(200):
        clock.now += 1.0  # one second of training between captures
        if throttle.should_render():
            with throttle.timed():
                clock.now += 2.0  # a render costs two seconds
            rendered += 1
            assert throttle.render_time <= 0.1 * (clock.now - throttle.start_time) + 2.0
    assert throttle.render_time <= 0.1 * clock.now + 1e-9 + 2.0
    assert 5 <= rendered <= 12  # ~ 0.1 * 200 s / 2 s, the first render is free
    before = throttle.renders
    assert throttle.should_render(force=True)  # the final call always renders
    assert throttle.renders == before  # should_render does not record durations itself


def test_throttle_validates_arguments() -> None:
    with pytest.raises(ValueError, match="`every_n_captures` must be an int >= 1, got 0"):
        RenderThrottle(every_n_captures=0)
    with pytest.raises(ValueError, match="`min_interval_s`"):
        RenderThrottle(min_interval_s=-1.0)
    with pytest.raises(ValueError, match=r"`max_fraction_of_time` must be in \(0, 1\]"):
        RenderThrottle(max_fraction_of_time=1.5)


# ---------------------------------------------------------------------------------------------
# the group


class RecordingSink(Sink):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []
        self.fail = fail
        self.closed = False

    def log_frame(self, frame: ManifoldFrame, step: int, renders: Renders | None = None) -> None:
        if self.fail:
            raise RuntimeError("disk full")
        self.calls.append((frame.probe, step))

    def close(self) -> None:
        self.closed = True


def test_group_throttles_lazily_and_once_per_step(frame: ManifoldFrame) -> None:
    sink = RecordingSink()
    group = SinkGroup(
        [sink], throttle=RenderThrottle(every_n_captures=2, max_fraction_of_time=None)
    )
    built: list[int] = []
    val = dataclasses.replace(frame, probe="val")

    def lazy(f: ManifoldFrame, step: int):
        return lambda: built.append(step) or f

    for step in (0, 10, 20, 30):  # two probes per step: one decision per step
        group.log_frame(lazy(frame, step), step)
        group.log_frame(lazy(val, step), step)
    assert sink.calls == [("train", 0), ("val", 0), ("train", 20), ("val", 20)]
    assert built == [0, 0, 20, 20]  # skipped captures never build their frame
    assert group.log_frame(frame, 30, force=True)  # final call renders anyway
    assert group.log_frame(frame, 30, force=True)  # ... but not twice at one step
    assert sink.calls[-1] == ("train", 30)
    assert len(sink.calls) == 5
    assert group.log_frames([frame, val], 40, force=True)
    assert sink.calls[-2:] == [("train", 40), ("val", 40)]
    group.close()
    assert sink.closed


def test_group_reports_a_failing_sink_once(frame: ManifoldFrame) -> None:
    bad, good = RecordingSink(fail=True), RecordingSink()
    group = SinkGroup([bad, good], throttle=RenderThrottle(max_fraction_of_time=None))
    with pytest.warns(UserWarning, match="RecordingSink failed .*disk full.*training continues"):
        group.log_frame(frame, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group.log_frame(frame, 2)
    assert good.calls == [("train", 1), ("train", 2)]
    with pytest.raises(RuntimeError, match="disk full"):
        SinkGroup([bad], strict=True).log_frame(frame, 3)
    with pytest.raises(TypeError, match="`sinks` must contain Sink instances"):
        SinkGroup([object()])  # type: ignore[list-item]


def test_group_survives_a_failing_frame_builder(frame: ManifoldFrame) -> None:
    sink = RecordingSink()
    group = SinkGroup([sink], throttle=RenderThrottle(max_fraction_of_time=None))

    def boom() -> ManifoldFrame:
        raise RuntimeError("nan everywhere")

    with pytest.warns(UserWarning, match="building the manifold frame failed.*nan everywhere"):
        group.log_frame(boom, 1)
    group.log_frame(frame, 2)
    assert sink.calls == [("train", 2)]
    with pytest.raises(RuntimeError, match="nan everywhere"):
        SinkGroup([sink], strict=True).log_frame(boom, 3)


def test_group_does_nothing_off_rank_zero(frame: ManifoldFrame, monkeypatch) -> None:
    sink = RecordingSink()
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert not SinkGroup([sink]).log_frame(frame, 1, force=True)
    assert sink.calls == []


def test_coordinate_table(frame: ManifoldFrame) -> None:
    columns, rows = coordinate_table(frame, max_dims=3)
    assert columns == ["step", "progress", "error", "pc1", "pc2", "pc3", "run"]
    t, m = len(frame.live_steps), len(frame.ref_steps)
    assert len(rows) == t + m
    live = [r for r in rows if r[-1] == "this run"]
    order = np.argsort(frame.live_steps)
    np.testing.assert_allclose([r[3] for r in live], frame.live_coords[order, 0])
    assert [r[0] for r in live] == list(frame.live_steps[order])
    ref = rows[t:]
    assert {r[-1] for r in ref} == set(frame.ref_run_names)
    assert all(r[2] is None for r in ref)  # unknown reference error


# ---------------------------------------------------------------------------------------------
# choosing sinks


def test_sinks_for_loggers_choice(tmp_path: Path, monkeypatch) -> None:
    tb = TensorBoardLogger(tmp_path / "tb")
    csv_logger = CSVLogger(tmp_path / "csv")
    wb = WandbLogger(save_dir=str(tmp_path), offline=True)
    kinds = [type(s) for s in sinks_for_loggers([tb, wb, csv_logger], tmp_path / "run")]
    assert kinds == [TensorBoardSink, WandbSink, FilesSink]
    assert [type(s) for s in sinks_for_loggers([tb], tmp_path)] == [TensorBoardSink]
    no_logger = sinks_for_loggers([], tmp_path / "run")
    assert [type(s) for s in no_logger] == [FilesSink]
    assert no_logger[0].dirpath == tmp_path / "run"
    from_csv = sinks_for_loggers([csv_logger], None)
    assert from_csv[0].dirpath == Path(csv_logger.log_dir)
    assert [type(s) for s in sinks_for_loggers([tb], tmp_path, files=True)] == [
        TensorBoardSink,
        FilesSink,
    ]
    with pytest.raises(ValueError, match="`dirpath` must be given"):
        sinks_for_loggers(None, None)

    monkeypatch.setitem(sys.modules, "wandb", None)  # wandb uninstalled after the logger exists
    with pytest.warns(UserWarning, match=r"pip install 'lightning-manifold\[wandb\]'") as record:
        kinds = [type(s) for s in sinks_for_loggers([tb, wb], tmp_path)]
    assert kinds == [TensorBoardSink]
    assert len([w for w in record if "lightning-manifold[wandb]" in str(w.message)]) == 1


def test_tensorboard_missing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ModuleNotFoundError, match=r"lightning-manifold\[tensorboard\]"):
        TensorBoardSink(object())


# ---------------------------------------------------------------------------------------------
# TensorBoard, read back


def test_tensorboard_sink_reads_back(frame: ManifoldFrame, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    sinks = sinks_for_loggers([logger], tmp_path / "unused")
    assert [type(s) for s in sinks] == [TensorBoardSink]
    group = _group(sinks)
    steps = (3, 40)
    for step in steps:
        group.log_frame(dataclasses.replace(frame, step=step), step)
    group.log_frame(frame, steps[-1], force=True)  # repeated final call: no duplicate embedding
    group.close()

    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    images = acc.Tags()["images"]
    for name in ("manifold", "spectrum", "progress", "diagnostics"):
        tag = f"manifold/train/{name}"
        assert tag in images
        events = acc.Images(tag)
        assert [e.step for e in events] == list(steps)
        assert events[0].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
        assert events[0].width > 50
        assert events[0].height > 50

    mesh_tags = [t for t in acc.Tags()["tensors"] if t.startswith("manifold/train/cloud")]
    assert mesh_tags, acc.Tags()["tensors"]
    vertex_tag = next(t for t in mesh_tags if "VERTEX" in t)
    vertices = acc.Tensors(vertex_tag)
    assert [e.step for e in vertices] == list(steps)
    n_points = len(frame.live_steps) + len(frame.ref_steps) + len(frame.geodesic) + 2
    assert list(vertices[0].tensor_proto.tensor_shape.dim)[1].size == n_points

    config = (Path(logger.log_dir) / "projector_config.pbtxt").read_text()
    assert config.count("embeddings {") == len(steps)
    assert 'tensor_name: "manifold/train:00003"' in config
    for step in steps:
        sub = Path(logger.log_dir) / f"{step:05d}" / "manifold%2ftrain"
        assert f"{step:05d}/manifold%2ftrain/tensors.tsv" in config
        assert f"{step:05d}/manifold%2ftrain/metadata.tsv" in config
        mat = np.loadtxt(sub / "tensors.tsv", delimiter="\t", ndmin=2)
        assert mat.shape == (n_points, 3)
        order = np.argsort(frame.live_steps)
        np.testing.assert_allclose(mat[: len(order)], frame.live_coords[order, :3], rtol=1e-5)
        meta = (sub / "metadata.tsv").read_text().splitlines()
        assert meta[0].split("\t") == ["run", "step", "progress", "error", "probe"]
        assert len(meta) == n_points + 1
        first = meta[1].split("\t")
        assert first[0] == "this run"
        assert first[1] == str(frame.live_steps[order][0])
        assert first[4] == "train"


# ---------------------------------------------------------------------------------------------
# Weights & Biases (offline), read back


def test_wandb_sink_reads_back(frame: ManifoldFrame, tmp_path: Path, monkeypatch) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="lm-test")
    sinks = sinks_for_loggers([logger], tmp_path / "unused")
    assert [type(s) for s in sinks] == [WandbSink]
    group = _group(sinks)
    try:
        for step in (5, 50):
            group.log_frame(dataclasses.replace(frame, step=step), step)
        group.close()
    finally:
        wandb.finish()

    runs = glob.glob(str(tmp_path / "**" / "offline-run-*"), recursive=True)
    assert len(runs) == 1
    media = Path(runs[0]) / "files" / "media"
    plotly_files = sorted(media.glob("plotly/manifold/train/manifold_3d_*.plotly.json"))
    images = sorted(media.glob("images/manifold/train/summary_*.png"))
    tables = sorted(media.glob("table/manifold/train/coordinates_*.table.json"))
    found = list(media.rglob("*"))
    assert len(plotly_files) == 2, found
    assert len(images) == 2, found
    assert len(tables) == 2, found

    fig = json.loads(plotly_files[-1].read_text())
    names = [t.get("name") for t in fig["data"]]
    assert "this run" in names
    assert "truth P*" in names
    live = fig["data"][names.index("this run")]
    assert live["type"] == "scatter3d"
    assert all(w in live["hovertemplate"] for w in ("step", "progress", "error"))

    assert images[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    table = json.loads(tables[-1].read_text())
    assert table["columns"][:3] == ["step", "progress", "error"]
    assert table["columns"][-1] == "run"
    assert len(table["data"]) == len(frame.live_steps) + len(frame.ref_steps)

    # one history row per capture, holding all media and the trainer's step
    rows = _wandb_history(next(Path(runs[0]).glob("*.wandb")))
    assert [json.loads(r["trainer/global_step"]) for r in rows] == [5, 50]
    for row in rows:
        for key in ("manifold_3d", "coordinates", "summary"):
            assert any(k.startswith(f"manifold/train/{key}/") for k in row), (key, sorted(row))


def _wandb_history(path: Path, patience_s: float = 10.0) -> list[dict[str, str]]:
    """History rows (key -> value_json) of a ``.wandb`` file: a 7-byte W&B header, then
    leveldb-log records (32 KiB blocks, 7-byte chunk headers) of ``wandb_internal_pb2.Record``.

    W&B's service process may still be writing the file's tail just after ``wandb.finish()``
    returns: a record that does not parse yet is read again, for up to ``patience_s``."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + patience_s
    while True:
        try:
            return _wandb_records(path.read_bytes())
        except DecodeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _wandb_records(data: bytes) -> list[dict[str, str]]:
    """The history rows of the bytes of a ``.wandb`` file (see :func:`_wandb_history`)."""
    from wandb.proto import wandb_internal_pb2

    block, pos = 32768, 7
    records: list[bytes] = []
    pending = b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            records.append(chunk)
        elif kind in (2, 3):  # first, middle
            pending = (pending if kind == 3 else b"") + chunk
        elif kind == 4:  # last
            records.append(pending + chunk)
    rows = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
            )
    return rows


class CapturingLogger:
    def __init__(self) -> None:
        self.logged: list[tuple[dict, int | None]] = []

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.logged.append((dict(metrics), step))


def test_wandb_sink_without_plotly(frame: ManifoldFrame, monkeypatch) -> None:
    pytest.importorskip("wandb")
    logger = CapturingLogger()
    sink = WandbSink(logger)
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    renders = Renders(frame, dpi=DPI)  # shared: the summary image is rendered once
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for step in (1, 2):
            sink.log_frame(frame, step, renders)
    plotly_warnings = [w for w in record if "lightning-manifold[plotly]" in str(w.message)]
    assert len(plotly_warnings) == 1  # warned once
    assert [step for _, step in logger.logged] == [1, 2]  # one dict per capture
    keys = set(logger.logged[0][0])
    assert keys == {"manifold/train/coordinates", "manifold/train/summary", "manifold/train/live"}


def test_wandb_sink_one_dict_per_capture(frame: ManifoldFrame) -> None:
    pytest.importorskip("wandb")
    logger = CapturingLogger()
    group = _group([WandbSink(logger, plotly=False, image=False, live=False)])
    group.log_frames([frame, dataclasses.replace(frame, probe="val")], 12)
    assert len(logger.logged) == 1
    media, step = logger.logged[0]
    assert step == 12
    assert set(media) == {"manifold/train/coordinates", "manifold/val/coordinates"}


def test_wandb_missing(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'lightning-manifold\[wandb\]'"):
        WandbSink(CapturingLogger())


# ---------------------------------------------------------------------------------------------
# files (CSVLogger or no logger)


def _check_files(directory: Path, frame: ManifoldFrame, *, html: bool = True) -> None:
    png = directory / "manifold_train.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = directory / "manifold_train.html"
    if html:
        text = page.read_text(encoding="utf-8")
        assert "Plotly.newPlot" in text
        assert len(text) > 1_000_000
        assert re.search(r"<script[^>]*\bsrc=", text) is None  # no CDN, works offline
        assert "data:image/png;base64," in text
    else:
        assert not page.exists()
    with (directory / "manifold_train_coordinates.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    live = [r for r in rows if r["kind"] == "live"]
    assert len(live) == len(frame.live_steps)
    assert len(rows) - len(live) == len(frame.ref_steps)
    order = np.argsort(frame.live_steps)
    np.testing.assert_allclose([float(r["pc1"]) for r in live], frame.live_coords[order, 0])
    np.testing.assert_allclose([float(r["progress"]) for r in live], frame.live_progress[order])
    np.testing.assert_allclose(
        [float(r["geodesic_distance"]) for r in live], frame.live_geodesic_distance[order]
    )
    assert all(r["error"] == "" for r in rows if r["kind"] == "reference")
    assert [int(r["step"]) for r in live] == list(frame.live_steps[order])
    assert {r["run"] for r in rows if r["kind"] == "reference"} == set(frame.ref_run_names)
    assert not list(directory.glob(".*tmp"))
    assert not list(directory.glob(".*render"))


def test_files_for_csv_logger_and_no_logger(frame: ManifoldFrame, tmp_path: Path) -> None:
    csv_logger = CSVLogger(tmp_path / "logs")
    store_run = tmp_path / "runs" / "run-a"
    for loggers, where in (([csv_logger], store_run), ([], tmp_path / "runs" / "run-b")):
        sinks = sinks_for_loggers(loggers, where)
        assert [type(s) for s in sinks] == [FilesSink]
        group = _group(sinks)
        group.log_frame(frame, 7)
        group.close()
        _check_files(where, frame)


def test_files_keep_history(frame: ManifoldFrame, tmp_path: Path) -> None:
    group = _group([FilesSink(tmp_path, html=False, keep_history=True)])
    for step in (1, 2):
        group.log_frame(frame, step)
    assert sorted(p.name for p in tmp_path.glob("*step*.png")) == [
        "manifold_train_step00000001.png",
        "manifold_train_step00000002.png",
    ]
    with pytest.raises(TypeError, match="`dirpath` must be a str or path"):
        FilesSink(3)  # type: ignore[arg-type]


def test_files_without_plotly_write_png_and_warn_once(
    frame: ManifoldFrame, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    group = _group(sinks_for_loggers(None, tmp_path))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        group.log_frame(frame, 1)
        group.log_frame(frame, 2)
    messages = [str(w.message) for w in record if "plotly" in str(w.message)]
    assert len(messages) == 1
    assert (
        "plotly is needed for interactive 3D plots: pip install 'lightning-manifold[plotly]'"
        in (messages[0])
    )
    _check_files(tmp_path, frame, html=False)


def test_several_probes_and_odd_names(frame: ManifoldFrame, tmp_path: Path) -> None:
    odd = dataclasses.replace(frame, probe="val/held out")
    group = _group([FilesSink(tmp_path, html=False, png=False)])
    group.log_frames([frame, odd], 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifold_train_coordinates.csv",
        "manifold_val_held_out_coordinates.csv",
    ]


def test_throttle_seconds_until_allowed_counts_the_cost_clock() -> None:
    now, cpu = [0.0], [0.0]
    throttle = RenderThrottle(
        max_fraction_of_time=0.1, clock=lambda: now[0], cost_clock=lambda: cpu[0]
    )
    assert throttle.seconds_until_allowed() == 0.0  # the first render starts at once
    with throttle.timed():
        cpu[0] += 0.5  # 0.5 s of the worker's CPU time ...
        now[0] += 2.0  # ... during 2 s of wall time (waiting for the GIL is not counted)
    assert throttle.render_time == 0.5
    # the next render (expected cost: the mean, 0.5 s) fits when 0.1 * elapsed >= 0.5 + 0.5
    assert throttle.seconds_until_allowed() == pytest.approx(10.0 - 2.0)
    now[0] = 10.5
    assert throttle.seconds_until_allowed() == 0.0
    assert throttle.seconds_until_allowed(expected=0.6) == pytest.approx((0.5 + 0.6) / 0.1 - 10.5)
    spaced = RenderThrottle(min_interval_s=3.0, max_fraction_of_time=None, clock=lambda: now[0])
    spaced.mark()
    now[0] += 1.0
    assert spaced.seconds_until_allowed() == pytest.approx(2.0)


def test_files_sink_writes_the_live_picture_until_a_full_render(
    frame: ManifoldFrame, tmp_path: Path
) -> None:
    sink = FilesSink(tmp_path)
    paths = sink.paths("train")
    sink.log_frame(frame, 3, Renders(frame, full=False))
    assert paths["png"].read_bytes() == Renders(frame, full=False).live_png()
    assert not paths["html"].exists()  # the interactive report comes with the final picture
    assert paths["csv"].exists()
    pytest.importorskip("plotly")
    sink.log_frame(frame, 4, Renders(frame, full=False, final=True))
    assert "plotly" in paths["html"].read_text(encoding="utf-8").lower()


@pytest.mark.parametrize("prefix", ["", "fit"])
def test_scalars_read_back_as_lightnings_own_tensorboard_logging(tmp_path: Path, prefix: str):
    """One event holding every scalar reads back (EventAccumulator) exactly as the per-key
    events of ``TensorBoardLogger.log_metrics``: same tags (the prefix applied), steps and
    values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_manifold.sinks.scalars import log_scalars

    rng = np.random.default_rng(0)
    batches = [
        (step, {f"manifold/train/k{i}": float(rng.normal()) for i in range(5)})
        for step in (0, 3, 10)
    ]
    ours = TensorBoardLogger(tmp_path, name="ours", prefix=prefix)
    lightning = TensorBoardLogger(tmp_path, name="lightning", prefix=prefix)
    for step, scalars in batches:
        log_scalars(ours, scalars, step)
        lightning.log_metrics(scalars, step=step)
    read = {}
    for logger in (ours, lightning):
        logger.experiment.flush()
        acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
        acc.Reload()
        tags = sorted(acc.Tags()["scalars"])
        read[logger.name] = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags}
        logger.finalize("success")
    assert read["ours"] == read["lightning"]
    expected_tags = {(f"{prefix}-{k}" if prefix else k) for k in batches[0][1]}
    assert set(read["ours"]) == expected_tags
    first = next(iter(batches[0][1]))
    tag = f"{prefix}-{first}" if prefix else first
    assert [s for s, _ in read["ours"][tag]] == [0, 3, 10]
    assert read["ours"][tag][1][1] == pytest.approx(batches[1][1][first], rel=1e-6)


def test_scalars_go_through_log_metrics_for_other_loggers(tmp_path: Path):
    from lightning_manifold.sinks.scalars import log_scalars

    logger = CSVLogger(tmp_path, name="csv")
    log_scalars(logger, {"manifold/train/progress": 0.25}, 7)
    logger.save()
    rows = list(csv.DictReader((Path(logger.log_dir) / "metrics.csv").read_text().splitlines()))
    assert rows == [{"step": "7", "manifold/train/progress": "0.25"}]
