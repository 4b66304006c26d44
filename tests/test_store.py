"""Tests of lightning_manifold.store: layout, round trips, laziness, validation, crash safety,
resume rollback, listing and loading several runs."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _store_files import edit_record, read_all_records

from lightning_manifold import store as store_module
from lightning_manifold.snapshot import Snapshot
from lightning_manifold.store import (
    FORMAT_VERSION,
    StoreError,
    StoreWarning,
    TrajectoryStore,
    list_stores,
    load_stores,
    store_path,
)

N, C = 20, 4


def _labels(n: int = N, c: int = C, seed: int = 0) -> np.ndarray:
    labels = np.random.default_rng(seed).integers(0, c, size=n)
    labels[0] = c - 1
    return labels


def _log_probs(seed: int, n: int = N, c: int = C, dtype: type = np.float64) -> np.ndarray:
    """Plain log-softmax of random logits."""
    z = np.random.default_rng(seed).normal(size=(n, c)) * 3.0
    z = z - z.max(axis=1, keepdims=True)
    return (z - np.log(np.exp(z).sum(axis=1, keepdims=True))).astype(dtype)


def _create(root: Path, run: str = "run", probe: str = "train", **kw: object) -> TrajectoryStore:
    kw.setdefault("labels", _labels())
    kw.setdefault("num_classes", C)
    return TrajectoryStore.create(
        store_path(root, run, probe), probe_name=probe, run_name=run, **kw
    )


def _strict_json(path: Path) -> dict:
    def reject(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=reject)


# --------------------------------------------------------------------------------------------
# layout and round trip
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_and_layout(tmp_path: Path, dtype: type) -> None:
    labels = _labels()
    store = _create(tmp_path, labels=labels, meta={"lr": 0.1, "arch": "mlp"})
    arrays = [_log_probs(s, dtype=dtype) for s in range(4)]
    for i, arr in enumerate(arrays):
        index = store.append(
            arr, step=3 * i, epoch=i // 2, wall_time=100.0 + i, metrics={"loss": 0.5 * i}
        )
        assert index == i
    root = tmp_path / "run" / "train"
    assert store.path == root
    manifest = _strict_json(root / "manifest.json")
    assert manifest["version"] == FORMAT_VERSION
    log = manifest["log"]
    assert sorted(p.name for p in root.iterdir()) == [
        "labels.npy",
        "manifest.json",
        log,
        "snapshots",
    ]
    assert sorted(p.name for p in (root / "snapshots").iterdir()) == [
        f"{i:06d}.npy" for i in range(4)
    ]
    # the records: the manifest's, then one strict-JSON line per append in the log
    lines = (root / log).read_text().splitlines()
    records = manifest["records"] + [json.loads(line) for line in lines]
    assert len(lines) == 4 - len(manifest["records"])
    assert records[2] == {
        "index": 2,
        "step": 6,
        "epoch": 1,
        "wall_time": 102.0,
        "metrics": {"loss": 1.0},
        "valid": True,
        "file": "snapshots/000002.npy",
    }
    np.testing.assert_array_equal(np.load(root / "labels.npy", allow_pickle=False), labels)

    run = TrajectoryStore(root)
    assert len(run) == 4
    assert (run.run_name, run.probe_name) == ("run", "train")
    assert (run.num_classes, run.num_samples) == (C, N)
    assert run.meta == {"lr": 0.1, "arch": "mlp"}
    assert run.steps.dtype == np.int64
    np.testing.assert_array_equal(run.steps, [0, 3, 6, 9])
    np.testing.assert_array_equal(run.epochs, [0, 0, 1, 1])
    np.testing.assert_array_equal(run.wall_times, [100.0, 101.0, 102.0, 103.0])
    np.testing.assert_array_equal(run.valid, [True] * 4)
    np.testing.assert_array_equal(run.labels, labels)
    assert run.labels.dtype == np.int64
    np.testing.assert_array_equal(run.metrics("loss"), [0.0, 0.5, 1.0, 1.5])
    assert run.records[1]["step"] == 3
    lp = run.log_probs()
    assert lp.shape == (4, N, C)
    assert lp.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(lp), np.stack(arrays))
    for i, arr in enumerate(arrays):
        loaded = np.load(root / "snapshots" / f"{i:06d}.npy", allow_pickle=False)
        np.testing.assert_array_equal(loaded, arr)
    assert "snapshots=4" in repr(run)


def test_append_accepts_tensors_and_converts(tmp_path: Path) -> None:
    store = _create(tmp_path)
    t = torch.log_softmax(torch.randn(N, C), dim=-1)
    store.append(t, step=0, epoch=0, metrics={"loss": torch.tensor(0.25)})
    assert store.dtype == np.float32
    store.append(t.double(), step=1, epoch=0)  # cast to the store's dtype
    store.append(t.to(torch.bfloat16), step=2, epoch=0)
    lp = TrajectoryStore(store.path).log_probs()
    np.testing.assert_array_equal(lp[0], t.numpy())
    np.testing.assert_array_equal(lp[1], t.numpy())
    np.testing.assert_array_equal(lp[2], t.to(torch.bfloat16).float().numpy())
    assert lp.dtype == np.float32
    assert store.metrics("loss")[0] == 0.25
    f64 = _create(tmp_path, run="r64", dtype=torch.float64)
    f64.append(t, step=0, epoch=0)
    assert TrajectoryStore(f64.path).log_probs()[0].dtype == np.float64


def test_append_validation(tmp_path: Path) -> None:
    store = _create(tmp_path)
    store.append(_log_probs(0), step=5, epoch=0)
    with pytest.raises(ValueError, match=r"`log_probs` must have shape \(N, C\) = \(20, 4\), got"):
        store.append(_log_probs(0, n=19), step=6, epoch=0)
    with pytest.raises(ValueError, match=r"`log_probs` must have shape .* got \(20, 5\)"):
        store.append(_log_probs(0, c=5), step=6, epoch=0)
    with pytest.raises(ValueError, match=r"`log_probs` must be floating point"):
        store.append(np.zeros((N, C), dtype=np.int64), step=6, epoch=0)
    with pytest.raises(ValueError, match=r"`log_probs` must be floating point"):
        store.append(np.empty((N, C), dtype=object), step=6, epoch=0)
    with pytest.raises(ValueError, match=r"`step` must be greater than the last recorded step 5"):
        store.append(_log_probs(0), step=5, epoch=0)
    with pytest.raises(ValueError, match=r"`epoch` must be >= 0, got -1"):
        store.append(_log_probs(0), step=6, epoch=-1)
    with pytest.raises(TypeError, match=r"`metrics\['acc'\]` must be a real number"):
        store.append(_log_probs(0), step=6, epoch=0, metrics={"acc": "high"})
    with pytest.raises(ValueError, match=r"`wall_time` must be finite"):
        store.append(_log_probs(0), step=6, epoch=0, wall_time=float("nan"))
    assert len(store) == 1
    assert len(TrajectoryStore(store.path)) == 1


def test_invalid_snapshots_are_recorded_not_dropped(tmp_path: Path) -> None:
    store = _create(tmp_path)
    good = _log_probs(1)
    diverged = good.copy()
    diverged[3, 1] = np.nan
    store.append(good, step=0, epoch=0, metrics={"loss": 1.0})
    store.append(diverged, step=1, epoch=0, valid=False, metrics={"loss": float("nan")})
    store.append(diverged, step=2, epoch=0, metrics={"loss": float("inf")})  # detected as NaN
    store.append(good, step=3, epoch=0, metrics={"loss": float("-inf")})
    run = TrajectoryStore(store.path)
    np.testing.assert_array_equal(run.valid, [True, False, False, True])
    np.testing.assert_array_equal(run.steps, [0, 1, 2, 3])
    assert run.log_probs().shape == (2, N, C)
    assert run.log_probs(valid_only=False).shape == (4, N, C)
    stored = run.log_probs(valid_only=False)[1]
    assert np.isnan(stored[3, 1])
    np.testing.assert_array_equal(np.nan_to_num(stored), np.nan_to_num(diverged))
    np.testing.assert_array_equal(run.snapshot(2)[0], diverged[0])
    loss = run.metrics("loss")
    assert loss[0] == 1.0
    assert np.isnan(loss[1])
    assert loss[2] == np.inf
    assert loss[3] == -np.inf
    np.testing.assert_array_equal(run.metrics("loss", valid_only=True), [1.0, -np.inf])
    _strict_json(run.path / "manifest.json")  # NaN/inf are not written as bare tokens


def test_metrics_missing_in_some_records(tmp_path: Path) -> None:
    store = _create(tmp_path)
    store.append(_log_probs(0), step=0, epoch=0, metrics={"a": 1.0})
    store.append(_log_probs(1), step=1, epoch=0, metrics={"a": 2.0, "b": 3.0})
    assert store.metric_names == ["a", "b"]
    b = store.metrics("b")
    assert np.isnan(b[0])
    assert b[1] == 3.0
    with pytest.raises(KeyError, match="'c'"):
        store.metrics("c")


def test_lazy_snapshot_array(tmp_path: Path) -> None:
    store = _create(tmp_path)
    arrays = np.stack([_log_probs(s) for s in range(5)])
    for i in range(5):
        store.append(arrays[i], step=i, epoch=0)
    lp = store.log_probs()
    assert (len(lp), lp.shape, lp.ndim, lp.dtype) == (5, (5, N, C), 3, np.float64)
    first = lp[0]
    assert isinstance(first, np.memmap)
    assert not first.flags.writeable
    np.testing.assert_array_equal(first, arrays[0])
    np.testing.assert_array_equal(lp[-1], arrays[-1])
    np.testing.assert_array_equal(lp[1:4], arrays[1:4])
    np.testing.assert_array_equal(lp[[4, 0]], arrays[[4, 0]])
    mask = np.array([True, False, True, False, False])
    np.testing.assert_array_equal(lp[mask], arrays[mask])
    np.testing.assert_array_equal(lp[:, 3], arrays[:, 3])
    np.testing.assert_array_equal(lp[2, 3:5, 1], arrays[2, 3:5, 1])
    np.testing.assert_array_equal(lp[..., 0], arrays[..., 0])
    np.testing.assert_array_equal(np.asarray(lp, dtype=np.float32), arrays.astype(np.float32))
    np.testing.assert_array_equal(np.stack(list(lp)), arrays)
    assert lp[5:].shape == (0, N, C)
    with pytest.raises(IndexError, match="out of range"):
        lp[5]
    empty = _create(tmp_path, run="empty").log_probs()
    assert np.asarray(empty).shape == (0, N, C)
    assert torch.as_tensor(np.asarray(lp)).shape == (5, N, C)


# --------------------------------------------------------------------------------------------
# create: validation, re-open, errors
# --------------------------------------------------------------------------------------------


def test_create_reopens_same_probe_for_append(tmp_path: Path) -> None:
    store = _create(tmp_path, meta={"seed": 0})
    store.append(_log_probs(0), step=0, epoch=0)
    again = _create(tmp_path, labels=torch.as_tensor(_labels()), meta={"note": "resumed"})
    assert len(again) == 1
    assert again.append(_log_probs(1), step=10, epoch=1) == 1
    run = TrajectoryStore(store.path)
    np.testing.assert_array_equal(run.steps, [0, 10])
    assert run.meta == {"seed": 0, "note": "resumed"}


def test_create_rejects_a_different_existing_store(tmp_path: Path) -> None:
    _create(tmp_path).append(_log_probs(0), step=0, epoch=0)
    other = _labels()
    other[[4, 9]] = (other[[4, 9]] + 1) % C
    with pytest.raises(ValueError, match=r"2 of 20 labels differ, first at index 4"):
        _create(tmp_path, labels=other)
    with pytest.raises(ValueError, match=r"labels have shape \(20,\) stored vs \(21,\) given"):
        _create(tmp_path, labels=np.zeros(21, dtype=np.int64))
    with pytest.raises(ValueError, match=r"num_classes 4 stored vs 6 given"):
        _create(tmp_path, num_classes=6)
    with pytest.raises(ValueError, match=r"dtype float64 stored vs float32 given"):
        _create(tmp_path, dtype="float32")
    with pytest.raises(ValueError, match=r"run_name 'run' stored vs 'other' given"):
        TrajectoryStore.create(
            tmp_path / "run" / "train",
            labels=_labels(),
            num_classes=C,
            probe_name="train",
            run_name="other",
        )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"labels": np.zeros(0, dtype=np.int64)}, ValueError, r"`labels` is empty"),
        ({"labels": np.zeros(5)}, ValueError, r"`labels` must have an integer dtype"),
        ({"labels": np.zeros((5, 1), dtype=int)}, ValueError, r"`labels` must be 1-D"),
        ({"labels": np.array([0, -1])}, ValueError, r"`labels` must be non-negative"),
        ({"num_classes": 3}, ValueError, r"`num_classes` must be >= max\(labels\) \+ 1 = 4"),
        ({"probe_name": "a/b"}, ValueError, r"`probe_name` must be a non-empty string"),
        ({"run_name": ""}, ValueError, r"`run_name` must be a non-empty string"),
        ({"meta": {"f": object()}}, TypeError, r"`meta` must be a JSON-serialisable dict"),
        ({"meta": {"x": float("nan")}}, TypeError, r"`meta` must be a JSON-serialisable dict"),
        ({"dtype": "float16"}, ValueError, r"`dtype` must be float32 or float64"),
    ],
)
def test_create_validation(tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    args = {
        "labels": _labels(),
        "num_classes": C,
        "probe_name": "train",
        "run_name": "run",
        **kwargs,
    }
    with pytest.raises(error, match=match):
        TrajectoryStore.create(tmp_path / "s", **args)
    assert not (tmp_path / "s").exists()


def test_create_unwritable_path_names_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match=r"cannot write a trajectory store at `path` = '.*file.txt"):
        _create(blocker)
    with pytest.raises(OSError, match=r"cannot write a trajectory store"):
        _create(Path("/proc/lightning-manifold-test"))


def test_opening_something_that_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"is not a trajectory store: manifest.json"):
        TrajectoryStore(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"manifest.json' is corrupt: not valid JSON"):
        TrajectoryStore(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match=r"expected format 'lightning-manifold/trajectory'"):
        TrajectoryStore(tmp_path)


def test_future_format_version_is_refused(tmp_path: Path) -> None:
    store = _create(tmp_path)
    manifest_path = store.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = FORMAT_VERSION + 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"format version {FORMAT_VERSION + 1}.* upgrade"):
        TrajectoryStore(store.path)


def test_manifest_cannot_point_outside_the_store(tmp_path: Path) -> None:
    store = _create(tmp_path)
    store.append(_log_probs(0), step=0, epoch=0)
    edit_record(store.path, 0, file="../../elsewhere.npy")
    with pytest.raises(StoreError, match=r"record 0 is corrupt: `file` .* '../../elsewhere.npy'"):
        TrajectoryStore(store.path)


def test_no_pickle_when_loading(tmp_path: Path) -> None:
    store = _create(tmp_path)
    store.append(_log_probs(0), step=0, epoch=0)
    # replace the snapshot by a pickled object array of the right shape
    evil = np.empty((N, C), dtype=object)
    np.save(store.path / "snapshots" / "000000.npy", evil, allow_pickle=True)
    with pytest.raises(StoreError, match=r"000000.npy' holds Python objects"):
        store.log_probs()[0]
    np.save(store.path / "labels.npy", np.empty(N, dtype=object), allow_pickle=True)
    with pytest.raises(StoreError, match=r"labels.npy' holds Python objects"):
        TrajectoryStore(store.path)


# --------------------------------------------------------------------------------------------
# crash safety
# --------------------------------------------------------------------------------------------


class _Crash(BaseException):
    """Stands in for the process dying (not an Exception, so nothing swallows it)."""


def test_crash_between_snapshot_and_record_keeps_store_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _create(tmp_path)
    store.append(_log_probs(0), step=0, epoch=0)
    store.append(_log_probs(1), step=1, epoch=0)

    def die(point: str) -> None:
        if point == "snapshot-written":
            raise _Crash

    monkeypatch.setattr(store_module, "_HOOK", die)
    with pytest.raises(_Crash):
        store.append(_log_probs(2), step=2, epoch=0)
    monkeypatch.setattr(store_module, "_HOOK", None)
    snapshots = store.path / "snapshots"
    assert (snapshots / "000002.npy").exists()  # written, but never listed
    # leftovers of a hard kill: a half-written snapshot and a half-written manifest
    (snapshots / ".000003.npy.999.deadbeef.tmp").write_bytes(b"\x93NUMPY\x01\x00partial")
    (store.path / ".manifest.json.999.deadbeef.tmp").write_text('{"format": "lightning-man')

    reader = TrajectoryStore(store.path)
    assert len(reader) == 2
    np.testing.assert_array_equal(reader.steps, [0, 1])
    np.testing.assert_array_equal(reader.log_probs()[1], _log_probs(1))
    assert len(list_stores(tmp_path)) == 1
    assert len(store) == 2  # the writer's view did not advance either

    resumed = _create(tmp_path)  # re-open for append: leftovers are cleaned
    assert sorted(p.name for p in snapshots.iterdir()) == ["000000.npy", "000001.npy"]
    assert sorted(p.name for p in store.path.iterdir()) == [
        "labels.npy",
        "manifest.json",
        read_all_records(store.path)["log"],
        "snapshots",
    ]
    assert resumed.append(_log_probs(7), step=2, epoch=0) == 2
    np.testing.assert_array_equal(TrajectoryStore(store.path).log_probs()[2], _log_probs(7))


def _append_forever(path: str, start_step: int) -> None:
    """Child process: re-open the store and append large snapshots until killed."""
    store = TrajectoryStore.create(
        path, labels=np.arange(2000) % 50, num_classes=50, probe_name="train", run_name="run"
    )
    step = start_step
    while True:
        store.append(np.full((2000, 50), -float(step)), step=step, epoch=0, metrics={"s": step})
        step += 1


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs fork to be fast"
)
def test_store_survives_sigkill_mid_write(tmp_path: Path) -> None:
    path = tmp_path / "run" / "train"
    ctx = multiprocessing.get_context("fork")
    next_step = 0
    for delay in (0.0, 0.013, 0.031):
        child = ctx.Process(target=_append_forever, args=(str(path), next_step))
        child.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # wait for a few more completed snapshots
            try:
                if len(TrajectoryStore(path)) >= next_step + 3:
                    break
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.002)
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        run = TrajectoryStore(path)  # readable after every kill
        steps = run.steps
        assert len(run) >= next_step + 3
        np.testing.assert_array_equal(steps, np.arange(len(run)))  # nothing lost or doubled
        for t, arr in enumerate(run.log_probs()):
            assert arr[0, 0] == -float(t)
            assert arr[-1, -1] == -float(t)
        np.testing.assert_array_equal(run.metrics("s"), steps)
        next_step = len(run)
    resumed = TrajectoryStore.create(
        path, labels=np.arange(2000) % 50, num_classes=50, probe_name="train", run_name="run"
    )
    names = sorted(p.name for p in (path / "snapshots").iterdir())
    assert names == [f"{i:06d}.npy" for i in range(len(resumed))]


# --------------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------------


def test_rollback_to_drops_records_after_a_checkpoint(tmp_path: Path) -> None:
    store = _create(tmp_path)
    for i in range(6):
        store.append(_log_probs(i), step=10 * i, epoch=i)
    assert store.rollback_to(25) == 3
    np.testing.assert_array_equal(store.steps, [0, 10, 20])
    snapshots = store.path / "snapshots"
    assert sorted(p.name for p in snapshots.iterdir()) == [f"{i:06d}.npy" for i in range(3)]
    assert store.rollback_to(100) == 0
    assert store.append(_log_probs(9), step=30, epoch=3) == 3
    run = TrajectoryStore(store.path)
    np.testing.assert_array_equal(run.steps, [0, 10, 20, 30])
    np.testing.assert_array_equal(run.log_probs()[3], _log_probs(9))
    assert store.rollback_to(-1) == 4
    assert len(TrajectoryStore(store.path)) == 0
    with pytest.raises(ValueError, match=r"`step` must be >= -1, got -2"):
        store.rollback_to(-2)


def test_resume_from_checkpoint_has_no_duplicated_or_missing_steps(tmp_path: Path) -> None:
    plan = [0, 1, 2, 4, 8, 16, 32]
    store = _create(tmp_path)
    for step in plan[:5]:
        store.append(_log_probs(step), step=step, epoch=0)
        if step == 4:
            checkpoint_last_step = step  # what the checkpoint remembers
    # the run dies after writing steps 8 (post-checkpoint); a new process resumes
    resumed = _create(tmp_path)
    resumed.rollback_to(checkpoint_last_step)
    for step in plan[plan.index(checkpoint_last_step) + 1 :]:
        resumed.append(_log_probs(step), step=step, epoch=0)
    run = TrajectoryStore(store.path)
    np.testing.assert_array_equal(run.steps, plan)
    for t, step in enumerate(plan):
        np.testing.assert_array_equal(run.log_probs()[t], _log_probs(step))


def test_refresh_follows_a_live_writer(tmp_path: Path) -> None:
    writer = _create(tmp_path)
    writer.append(_log_probs(0), step=0, epoch=0)
    reader = TrajectoryStore(writer.path)
    writer.append(_log_probs(1), step=1, epoch=0)
    assert len(reader) == 1
    assert reader.refresh() is reader
    assert len(reader) == 2


def test_append_snapshot(tmp_path: Path) -> None:
    store = _create(tmp_path)
    lp = torch.as_tensor(_log_probs(3))
    snap = Snapshot(
        probe="train",
        step=4,
        epoch=1,
        log_probs=lp,
        labels=torch.as_tensor(_labels()),
        wall_time=12.5,
        metrics={"progress": 0.25},
    )
    assert store.append_snapshot(snap) == 0
    rec = TrajectoryStore(store.path).records[0]
    assert (rec["step"], rec["epoch"], rec["wall_time"], rec["metrics"]) == (
        4,
        1,
        12.5,
        {"progress": 0.25},
    )
    with pytest.raises(ValueError, match=r"`snapshot.probe` must be 'train'"):
        store.append_snapshot(Snapshot("val", 5, 1, lp, snap.labels, 13.0))


# --------------------------------------------------------------------------------------------
# several runs
# --------------------------------------------------------------------------------------------


def test_list_stores_finds_every_run_and_probe(tmp_path: Path) -> None:
    for run in ("seed1", "seed0"):
        for probe in ("val", "train"):
            _create(tmp_path, run=run, probe=probe).append(_log_probs(0), step=0, epoch=0)
    (tmp_path / "seed0" / "wandb").mkdir()
    (tmp_path / "seed0" / "wandb" / "manifest.json").write_text('{"other": "tool"}')
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "manifest.json").write_text("not json at all")
    with pytest.warns(
        StoreWarning, match=r"skipping the trajectory store '.*notes'.*not valid JSON"
    ):
        found = list_stores(tmp_path)
    assert [(s.run_name, s.probe_name) for s in found] == [
        ("seed0", "train"),
        ("seed0", "val"),
        ("seed1", "train"),
        ("seed1", "val"),
    ]
    single = tmp_path / "seed1" / "val"
    assert [s.path for s in list_stores(single)] == [single]
    with pytest.raises(FileNotFoundError, match=r"`root` = '.*nowhere' is not a directory"):
        list_stores(tmp_path / "nowhere")


def test_load_stores_checks_shared_probe(tmp_path: Path) -> None:
    a = _create(tmp_path, run="a")
    b = _create(tmp_path, run="b")
    other = _labels()
    other[7] = (other[7] + 1) % C
    c = _create(tmp_path, run="c", labels=other)
    d = _create(tmp_path, run="d", labels=_labels(), num_classes=C + 1)
    loaded = load_stores([a.path, str(b.path), b])
    assert [s.run_name for s in loaded] == ["a", "b", "b"]
    with pytest.raises(ValueError, match=r"stores '.*a/train' and '.*c/train' .* index 7"):
        load_stores([a.path, c.path])
    with pytest.raises(ValueError, match=r"num_classes 4 vs 5"):
        load_stores([a.path, d.path])
    with pytest.raises(ValueError, match=r"`paths` must name at least one store"):
        load_stores([])


def test_store_path_validates_names(tmp_path: Path) -> None:
    assert store_path(tmp_path, "r", "p") == tmp_path / "r" / "p"
    with pytest.raises(ValueError, match=r"`run_name`"):
        store_path(tmp_path, "../up", "p")


def test_format_1_store_is_read_and_converted_by_its_first_write(tmp_path: Path) -> None:
    """A store as format 1 wrote it (every record in the manifest, no log) still loads."""
    root = tmp_path / "old" / "train"
    (root / "snapshots").mkdir(parents=True)
    np.save(root / "labels.npy", _labels())
    records = []
    for i in range(3):
        np.save(root / "snapshots" / f"{i:06d}.npy", _log_probs(i))
        records.append(
            {
                "index": i,
                "step": 5 * i,
                "epoch": 0,
                "wall_time": 10.0 + i,
                "metrics": {"loss": "nan" if i == 1 else 0.5},
                "valid": True,
                "file": f"snapshots/{i:06d}.npy",
            }
        )
    manifest = {
        "format": "lightning-manifold/trajectory",
        "version": 1,
        "run_name": "old",
        "probe_name": "train",
        "num_samples": N,
        "num_classes": C,
        "dtype": "float64",
        "labels": "labels.npy",
        "created": 1.0,
        "meta": {"seed": 3},
        "records": records,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    run = TrajectoryStore(root)
    assert run.format_version == 1
    np.testing.assert_array_equal(run.steps, [0, 5, 10])
    assert np.isnan(run.metrics("loss")[1])
    np.testing.assert_array_equal(run.log_probs()[2], _log_probs(2))
    resumed = TrajectoryStore.create(
        root, labels=_labels(), num_classes=C, probe_name="train", run_name="old"
    )
    resumed.append(_log_probs(3), step=15, epoch=1)
    again = TrajectoryStore(root)
    assert again.format_version == FORMAT_VERSION
    assert again.meta == {"seed": 3}
    np.testing.assert_array_equal(again.steps, [0, 5, 10, 15])
    np.testing.assert_array_equal(
        np.asarray(again.log_probs()), np.stack([_log_probs(i) for i in range(4)])
    )


def test_append_writes_constant_metadata_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """O(1) appends: the record log grows by one line per append; the manifest is rewritten
    only at compactions, whose total size stays within a constant factor of the records."""
    monkeypatch.setattr(store_module, "COMPACT_MIN_RECORDS", 8)
    written: list[int] = []
    real = store_module._atomic_write

    def counting(path: Path, write, *, durable: bool) -> None:
        real(path, write, durable=durable)
        if path.name == "manifest.json":
            written.append(path.stat().st_size)

    monkeypatch.setattr(store_module, "_atomic_write", counting)
    store = _create(tmp_path, durable=False)
    log_sizes = []
    for i in range(200):
        store.append(_log_probs(0), step=i, epoch=0, wall_time=1.0, metrics={"loss": 1.0})
        log = store.path / read_all_records(store.path)["log"]
        log_sizes.append(log.stat().st_size if log.exists() else 0)
    records = read_all_records(store.path)["records"]
    line = [len(json.dumps(r, separators=(",", ":"))) + 1 for r in records]
    # compactions at 8, 16, 32, 64, 128 records (+ the first append fixing the dtype)
    assert len(written) <= 2 + int(np.log2(200))
    assert sum(written) < 4 * sum(line) + len(written) * 400
    grew = np.diff(log_sizes)
    for i in np.flatnonzero(grew > 0):  # a plain append: exactly one line for record i + 1
        assert grew[i] == line[i + 1]
    assert (grew > 0).sum() >= 200 - 2 * len(written)
