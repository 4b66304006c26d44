"""Trajectory stores against hostile files and hard kills.

Links out of the store are refused, never followed; only files the store names and writes are
ever deleted; every file name a manifest or log gives is checked; array headers are checked
against the declared sizes before anything is allocated; a store killed with SIGKILL at any
point of an append or a compaction (real subprocesses) opens with every completed snapshot.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _store_files import edit_record, read_all_records, write_manifest
from conftest import write_store

from lightning_manifold import store as store_module
from lightning_manifold.store import StoreError, TrajectoryStore

N, C = 12, 3


def _lp(step: int) -> np.ndarray:
    """A deterministic (N, C) log-probability snapshot for ``step`` (plain log-softmax)."""
    z = np.sin(np.arange(N * C, dtype=np.float64).reshape(N, C) * (step + 1))
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _store(root: Path, steps: int = 3) -> TrajectoryStore:
    """A store of the snapshots ``_lp(0 .. steps - 1)`` at ``root/run/train``."""
    return write_store(root, "run", np.arange(N) % C, C, [_lp(s) for s in range(steps)])


# --------------------------------------------------------------------------------------------
# links out of the store
# --------------------------------------------------------------------------------------------


def test_snapshots_dir_linked_elsewhere_is_refused_and_nothing_there_deleted(tmp_path: Path):
    store = _store(tmp_path / "runs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victims = [elsewhere / "000123.npy", elsewhere / ".000123.npy.1.deadbeef.tmp"]
    for v in victims:
        v.write_bytes(b"precious")
    snapshots = store.path / "snapshots"
    for f in snapshots.iterdir():
        f.rename(elsewhere / f.name)
    snapshots.rmdir()
    snapshots.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(StoreError, match=r"'.*snapshots' is a symbolic link that leads out of"):
        TrajectoryStore(store.path)
    with pytest.raises(StoreError, match=r"snapshots' is a symbolic link"):
        TrajectoryStore.create(
            store.path, labels=np.arange(N) % C, num_classes=C, probe_name="train", run_name="run"
        )
    with pytest.raises(StoreError, match=r"snapshots' is a symbolic link"):
        store.rollback_to(-1)  # the writer opened before the link was planted: still refused
    assert all(v.read_bytes() == b"precious" for v in victims)
    assert {"000000.npy", "000001.npy", "000002.npy"} <= {p.name for p in elsewhere.iterdir()}


def test_rollback_refuses_a_snapshots_link_planted_after_opening(tmp_path: Path):
    store = _store(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (store.path / "snapshots").rename(elsewhere)
    (store.path / "snapshots").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(StoreError, match="symbolic link"):
        store.rollback_to(0)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["000000.npy", "000001.npy", "000002.npy"]


@pytest.mark.parametrize("name", ["snapshots/000001.npy", "labels.npy", "manifest.json"])
def test_a_file_linked_out_of_the_store_is_refused(tmp_path: Path, name: str):
    store = _store(tmp_path / "runs")
    outside = tmp_path / "outside.bin"
    target = store.path / name
    target.rename(outside)
    target.symlink_to(outside)
    with pytest.raises(
        StoreError, match=re.escape(f"'{target}' is a symbolic link that leads out")
    ):
        TrajectoryStore(store.path).log_probs()[1]
    assert outside.exists()


def test_a_link_inside_the_store_is_followed(tmp_path: Path):
    store = _store(tmp_path)
    copy = store.path / "snapshots" / "copy-of-1.npy"
    (store.path / "snapshots" / "000001.npy").rename(copy)
    (store.path / "snapshots" / "000001.npy").symlink_to(copy)
    np.testing.assert_array_equal(TrajectoryStore(store.path).log_probs()[1], _lp(1))


# --------------------------------------------------------------------------------------------
# names and deletion
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["manifest.json", "../x.npy", "/etc/passwd", "snapshots/000000.npy"]
)
def test_record_file_names_are_validated(tmp_path: Path, bad: str):
    store = _store(tmp_path)
    manifest = edit_record(store.path, 1, file=bad)
    before = manifest.read_bytes()
    with pytest.raises(StoreError, match=rf"'{manifest}' record 1 is corrupt: `file`.*{bad!r}"):
        TrajectoryStore(store.path)
    with pytest.raises(StoreError, match="record 1 is corrupt"):
        TrajectoryStore.create(
            store.path, labels=np.arange(N) % C, num_classes=C, probe_name="train", run_name="run"
        )
    assert manifest.read_bytes() == before  # nothing deleted or rewritten


def test_a_bad_name_in_the_record_log_names_the_log_and_line(tmp_path: Path):
    store = _store(tmp_path)
    log = store.path / read_all_records(store.path)["log"]
    lines = log.read_text().splitlines()
    rec = json.loads(lines[-1])
    rec["file"] = "manifest.json"
    log.write_text("\n".join([*lines[:-1], json.dumps(rec)]) + "\n")
    with pytest.raises(StoreError, match=rf"record log '{log}' line {len(lines)} is corrupt"):
        TrajectoryStore(store.path)


def test_only_files_the_store_names_are_deleted(tmp_path: Path):
    store = _store(tmp_path, steps=5)
    snapshots = store.path / "snapshots"
    foreign = ["notes.txt", "123.npy", "000099.npy.bak", "x000007.npy", ".hidden.tmp"]
    for name in foreign:
        (snapshots / name).write_bytes(b"keep")
    (store.path / "records-old.jsonl").write_text("keep")
    (snapshots / "000042.npy").symlink_to(tmp_path / "precious.npy")
    (tmp_path / "precious.npy").write_bytes(b"keep")
    store.rollback_to(1)
    resumed = TrajectoryStore.create(
        store.path, labels=np.arange(N) % C, num_classes=C, probe_name="train", run_name="run"
    )
    assert len(resumed) == 2
    names = sorted(p.name for p in snapshots.iterdir())
    assert names == sorted(["000000.npy", "000001.npy", "000042.npy", *foreign])
    assert (store.path / "records-old.jsonl").read_text() == "keep"
    assert (tmp_path / "precious.npy").read_bytes() == b"keep"


# --------------------------------------------------------------------------------------------
# size limits before allocation
# --------------------------------------------------------------------------------------------


def _lying_npy(path: Path, shape: tuple[int, ...], dtype: str) -> None:
    """A tiny .npy whose header claims ``shape`` of ``dtype``; holds 8 bytes of data."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
        )
        f.write(b"\0" * 8)


def _refused_without_allocating(call, match: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak} bytes allocated before refusing"


def test_huge_labels_header_is_refused_before_allocating(tmp_path: Path):
    store = _store(tmp_path)
    labels = store.path / "labels.npy"
    _lying_npy(labels, (10**10,), "<i8")
    assert labels.stat().st_size < 200
    _refused_without_allocating(
        lambda: TrajectoryStore(store.path), rf"'{labels}' must hold an array of shape \({N}\)"
    )
    # a manifest that agrees with the lie: the file does not hold the data it declares
    manifest = read_all_records(store.path)
    manifest["num_samples"] = 10**10
    write_manifest(store.path, manifest)
    _refused_without_allocating(lambda: TrajectoryStore(store.path), rf"'{labels}' is truncated")


def test_huge_snapshot_header_is_refused_before_allocating(tmp_path: Path):
    store = _store(tmp_path)
    snap = store.path / "snapshots" / "000002.npy"
    _lying_npy(snap, (10**6, 10**4), "<f8")
    run = TrajectoryStore(store.path)
    _refused_without_allocating(lambda: run.log_probs()[2], rf"'{snap}' must hold an array")
    _refused_without_allocating(lambda: np.asarray(run.log_probs()), rf"'{snap}'")


# --------------------------------------------------------------------------------------------
# torn record log, kills at every point of an append and a compaction
# --------------------------------------------------------------------------------------------


def test_a_torn_last_line_is_ignored_then_repaired(tmp_path: Path):
    store = _store(tmp_path, steps=3)
    log = store.path / read_all_records(store.path)["log"]
    with open(log, "ab") as f:
        f.write(b'{"index": 3, "step": 3, "ep')  # power loss in the middle of a write
    reader = TrajectoryStore(store.path)
    assert len(reader) == 3
    resumed = TrajectoryStore.create(
        store.path, labels=np.arange(N) % C, num_classes=C, probe_name="train", run_name="run"
    )
    resumed.append(_lp(3), step=3, epoch=0)
    lines = log.read_text().split("\n")
    assert lines[-1] == ""
    assert all(json.loads(line) for line in lines[:-1])
    run = TrajectoryStore(store.path)
    np.testing.assert_array_equal(run.steps, [0, 1, 2, 3])
    np.testing.assert_array_equal(run.log_probs()[3], _lp(3))


def test_rollback_then_reappend_across_compactions(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(store_module, "COMPACT_MIN_RECORDS", 2)
    store = _store(tmp_path, steps=9)
    assert store.rollback_to(4) == 4
    for s in range(5, 8):
        store.append(_lp(100 + s), step=s, epoch=0)
    run = TrajectoryStore(store.path)
    np.testing.assert_array_equal(run.steps, np.arange(8))
    np.testing.assert_array_equal(run.log_probs()[6], _lp(106))
    np.testing.assert_array_equal(run.log_probs()[4], _lp(4))
    logs = [p.name for p in store.path.glob("records-*.jsonl")]
    assert logs == [read_all_records(store.path)["log"]] or logs == []


_CHILD = r"""
import sys, time
import numpy as np
from lightning_manifold import store as S

path, point, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
N, C = 12, 3
S.COMPACT_MIN_RECORDS = 2  # compact often: every kill point is reached within a few appends
seen = 0

def hook(where):
    global seen
    if where == point:
        seen += 1
        if seen == nth:
            print("PAUSED", flush=True)
            time.sleep(60)

S._HOOK = hook
store = S.TrajectoryStore.create(path, labels=np.arange(N) % C, num_classes=C,
                                 probe_name="train", run_name="run")
step = len(store)
while True:
    z = np.sin(np.arange(N * C, dtype=np.float64).reshape(N, C) * (step + 1))
    store.append(z - np.log(np.exp(z).sum(axis=1, keepdims=True)), step=step, epoch=0,
                 metrics={"s": step})
    print("DONE", step, flush=True)
    step += 1
"""


def _kill_at(path: Path, point: str, nth: int, *, done_after: int = 0) -> int:
    """Run the appending child until it pauses at its ``nth`` ``point`` (or, for ``"none"``,
    has appended ``done_after`` more snapshots), SIGKILL it; return the last step it finished."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), point, str(nth)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    last, count = -1, 0
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("DONE"):
                last, count = int(line.split()[1]), count + 1
                if point == "none" and count >= done_after:
                    break
                assert count < 100, f"the child never reached {point!r}"
            elif line.startswith("PAUSED"):
                break
        else:
            raise AssertionError(f"child exited early with {child.wait()}")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    return last


def _check_complete(path: Path, last_done: int) -> int:
    run = TrajectoryStore(path)
    assert last_done + 1 <= len(run) <= last_done + 2  # at most the in-flight one more
    np.testing.assert_array_equal(run.steps, np.arange(len(run)))
    np.testing.assert_array_equal(run.metrics("s"), np.arange(len(run)))
    for t, arr in enumerate(run.log_probs()):
        np.testing.assert_array_equal(arr, _lp(t))
    return len(run)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_mid_append_and_mid_compaction_keeps_every_snapshot(tmp_path: Path):
    path = tmp_path / "run" / "train"
    kills = [
        ("snapshot-written", 3),  # snapshot file complete, its record not yet appended
        ("before-replace:000005.npy", 1),  # temporary snapshot file written, not renamed
        ("before-replace:manifest.json", 2),  # compaction: new manifest written, not committed
        ("compact-committed", 2),  # compaction committed, old record log not yet deleted
        ("none", 0),  # a kill at whatever moment the loop is in
    ]
    for point, nth in kills:
        _check_complete(path, _kill_at(path, point, nth, done_after=7))
    resumed = TrajectoryStore.create(
        path, labels=np.arange(N) % C, num_classes=C, probe_name="train", run_name="run"
    )
    names = sorted(p.name for p in (path / "snapshots").iterdir())
    assert names == [f"{i:06d}.npy" for i in range(len(resumed))]  # leftovers removed
    log = read_all_records(path)["log"]
    others = {p.name for p in path.iterdir()} - {"labels.npy", "manifest.json", "snapshots", log}
    assert not others  # no temporary file, no stale record log
    assert len(read_all_records(path)["records"]) == len(resumed)


def test_a_zip_bomb_reference_is_refused(tmp_path: Path):
    """A small compressed npz that would expand to far more than the file holds."""
    from lightning_manifold.embedding import ReferenceEmbedding

    bomb = tmp_path / "bomb.npz"
    with (
        zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z,
        z.open("grid_sqrt.npy", "w", force_zip64=True) as f,
    ):
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (1, 101, 4096, 1000)}
        )
        chunk = b"\0" * (1 << 20)
        for _ in range(16):  # 16 MiB of zeros here, 1.6 GB declared
            f.write(chunk)
    assert bomb.stat().st_size < 1 << 20
    _refused_without_allocating(
        lambda: ReferenceEmbedding.load(bomb),
        rf"'{bomb}' is not a lightning-manifold reference file: member 'grid_sqrt.npy' is "
        "compressed",
    )
