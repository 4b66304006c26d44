"""Bad-input battery for the files on disk: trajectory stores, reference files, array files.

Each case breaks one thing in a good store (or file) and asserts the exception type and that
the message names the file (or argument) and says what is wrong: never a bare numpy, json or
zipfile error, never advice to unpickle.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _store_files import edit_record, read_all_records, write_manifest
from conftest import write_store

from lightning_manifold.store import (
    StoreError,
    StoreWarning,
    TrajectoryStore,
    list_stores,
    scan_stores,
)

N, C = 10, 3


def _good(root: Path, steps: int = 3) -> TrajectoryStore:
    """A float32 store of ``steps`` random snapshots at ``root/run/train``."""
    rng = np.random.default_rng(0)
    log_probs = [torch.log_softmax(torch.tensor(rng.normal(size=(N, C))), -1) for _ in range(steps)]
    log_probs = [lp.to(torch.float32) for lp in log_probs]
    return write_store(root, "run", np.arange(N) % C, C, log_probs)


def _set_manifest(path: Path, **fields: Any) -> Path:
    manifest = read_all_records(path)
    manifest.update(fields)
    for key, value in fields.items():
        if value is _DELETE:
            del manifest[key]
    write_manifest(path, manifest)
    return path / "manifest.json"


_DELETE = object()


def _truncate(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


def _open(store: Path) -> Callable[[], Any]:
    return lambda: TrajectoryStore(store)


def _read_all(store: Path) -> Callable[[], Any]:
    return lambda: np.asarray(TrajectoryStore(store).log_probs())


# Each case: (break the store at `path`, return (call, the file the message must name, regex)).
Case = Callable[[Path], tuple[Callable[[], Any], Path, str]]


def _case_truncated_labels(p: Path):
    return _open(p), _truncate(p / "labels.npy", 130), r"is truncated: its header declares"


def _case_huge_labels(p: Path):
    f = p / "labels.npy"
    with open(f, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<i8", "fortran_order": False, "shape": (10**10,)}
        )
    return _open(p), f, rf"must hold an array of shape \({N}\), its header declares"


def _case_float_labels(p: Path):
    np.save(p / "labels.npy", np.zeros(N))
    return _open(p), p / "labels.npy", r"wrong element type.*float64"


def _case_label_too_large(p: Path):
    np.save(p / "labels.npy", np.full(N, C))
    return _open(p), p / "labels.npy", rf"class indices in \[0, {C}\)"


def _case_missing_labels(p: Path):
    (p / "labels.npy").unlink()
    return _open(p), p / "labels.npy", r"is missing"


def _case_truncated_snapshot(p: Path):
    f = _truncate(p / "snapshots" / "000001.npy", 140)
    return _read_all(p), f, r"is truncated"


def _case_wrong_shape_snapshot(p: Path):
    np.save(p / "snapshots" / "000001.npy", np.zeros((N, C + 1), np.float32))
    return _read_all(p), p / "snapshots" / "000001.npy", rf"shape \({N}, {C}\)"


def _case_wrong_dtype_snapshot(p: Path):
    np.save(p / "snapshots" / "000001.npy", np.zeros((N, C), np.float64))
    return _read_all(p), p / "snapshots" / "000001.npy", r"must hold float32 values"


def _case_random_bytes_snapshot(p: Path):
    f = p / "snapshots" / "000002.npy"
    f.write_bytes(np.random.default_rng(1).bytes(300))
    return _read_all(p), f, r"is not a valid \.npy array"


def _case_no_num_samples(p: Path):
    return _open(p), _set_manifest(p, num_samples=_DELETE), r"`num_samples` must be an int"


def _case_step_zero_string(p: Path):
    return _open(p), edit_record(p, 0, step="zero"), r"record 0 is corrupt: `step`.*'zero'"


def _case_corrupt_json(p: Path):
    (p / "manifest.json").write_text('{"format": "lightning-manifold/traj')
    return _open(p), p / "manifest.json", r"is corrupt: not valid JSON"


def _case_empty_manifest(p: Path):
    (p / "manifest.json").write_bytes(b"")
    return _open(p), p / "manifest.json", r"is corrupt: not valid JSON"


def _case_manifest_is_a_list(p: Path):
    (p / "manifest.json").write_text("[1, 2]")
    return _open(p), p / "manifest.json", r"not a trajectory store manifest"


def _case_version_string(p: Path):
    return _open(p), _set_manifest(p, version="two"), r"`version` must be an int"


def _case_dtype_float16(p: Path):
    return _open(p), _set_manifest(p, dtype="float16"), r"`dtype` must be float32 or float64"


def _case_num_classes_zero(p: Path):
    return _open(p), _set_manifest(p, num_classes=0), r"`num_classes` must be an int >= 1"


def _case_log_name_escapes(p: Path):
    return _open(p), _set_manifest(p, log="../x.jsonl"), r"`log` must name a file"


def _case_record_lacks_field(p: Path):
    manifest = read_all_records(p)
    del manifest["records"][1]["valid"]
    write_manifest(p, manifest)
    return _open(p), p / "manifest.json", r"record 1 is corrupt: the record lacks .*valid"


def _case_record_names_manifest(p: Path):
    return _open(p), edit_record(p, 2, file="manifest.json"), r"record 2 .*'manifest.json'"


def _case_record_index(p: Path):
    return _open(p), edit_record(p, 1, index=5), r"`index` must be 1"


def _case_steps_not_increasing(p: Path):
    return _open(p), edit_record(p, 2, step=0), r"greater than the previous step 1"


def _case_metric_not_number(p: Path):
    return _open(p), edit_record(p, 0, metrics={"loss": "abc"}), r"`metrics` must map"


def _case_log_line_not_json(p: Path):
    log = p / read_all_records(p)["log"]
    log.write_text('{"index": 0}\n{"index": 1}\n')  # complete lines, not records
    write_manifest(p, {**read_all_records(p), "records": []})
    log.write_text("not json\n")
    return _open(p), log, r"line 1 is corrupt: not valid JSON"


def _case_store_is_a_file(p: Path):
    f = p.parent / "a-file"
    f.write_text("x")
    return _open(f), f, r"is a file, not a trajectory store directory"


def _case_list_stores_raise(p: Path):
    (p / "manifest.json").write_text("{oops")
    root = p.parent.parent
    return lambda: list_stores(root, on_error="raise"), p, r"cannot open the trajectory store"


def _case_scale_source_truncated(p: Path):
    from lightning_manifold.scale import ModelSource

    f = _truncate(p / "snapshots" / "000000.npy", 130)
    return lambda: ModelSource.from_stores(p).log_probs([0]), f, r"is truncated"


def _case_from_npy_truncated(p: Path):
    from lightning_manifold.scale import ModelSource

    f = p.parent / "models.npy"
    np.save(f, np.zeros((4, N, C), np.float32))
    _truncate(f, 200)
    return lambda: ModelSource.from_npy(f), f, r"is truncated"


CASES: dict[str, Case] = {
    name[len("_case_") :]: fn for name, fn in globals().items() if name.startswith("_case_")
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_store_bad_input_names_the_file(tmp_path: Path, name: str) -> None:
    store = _good(tmp_path / "runs")
    call, named, pattern = CASES[name](store.path)
    # StoreError (a ValueError) from the store; a plain ValueError from the scale readers
    expected = (
        ValueError if name in ("scale_source_truncated", "from_npy_truncated") else StoreError
    )
    with pytest.raises(expected) as info:
        call()
    message = str(info.value)
    assert str(named) in message, message
    assert re.search(pattern, message), message
    assert "pickle" not in message


def test_a_missing_snapshot_is_a_file_not_found_naming_it(tmp_path: Path) -> None:
    store = _good(tmp_path)
    (store.path / "snapshots" / "000001.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"snapshot file '.*000001.npy' listed"):
        np.asarray(TrajectoryStore(store.path).log_probs())


def test_a_corrupt_store_is_skipped_with_a_warning_and_reported(tmp_path: Path) -> None:
    good = _good(tmp_path, steps=1)
    bad = _good(tmp_path / "other", steps=1)
    _truncate(bad.path / "labels.npy", 90)
    with pytest.warns(StoreWarning, match=rf"skipping the trajectory store '{bad.path}'.*labels"):
        found = list_stores(tmp_path)
    assert [s.path for s in found] == [good.path]
    stores, skipped = scan_stores(tmp_path)
    assert [s.path for s in stores] == [good.path]
    assert [s.path for s in skipped] == [bad.path]
    assert "truncated" in skipped[0].reason
    with pytest.raises(ValueError, match="`on_error` must be 'warn' or 'raise', got 'skip'"):
        list_stores(tmp_path, on_error="skip")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# reference files
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lightning_manifold.embedding import ReferenceEmbedding

    root = tmp_path_factory.mktemp("ref")
    store = _good(root, steps=5)
    return ReferenceEmbedding.from_store(store, n_components=2).save(root / "ref.npz")


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _ref_truncated(src: Path, dst: Path) -> str:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return r"not a lightning-manifold reference file: truncated"


def _ref_empty(src: Path, dst: Path) -> str:
    dst.write_bytes(b"")
    return r"not a lightning-manifold reference file: the file is empty"


def _ref_random(src: Path, dst: Path) -> str:
    dst.write_bytes(np.random.default_rng(2).bytes(4096))
    return r"not a lightning-manifold reference file: not an npz"


def _ref_text(src: Path, dst: Path) -> str:
    dst.write_text("# README\n\nsome text that is not an archive\n")
    return r"not a lightning-manifold reference file: not an npz"


def _ref_compressed(src: Path, dst: Path) -> str:
    np.savez_compressed(dst, **_arrays(src))
    return r"member '.*' is compressed"


def _ref_inconsistent(src: Path, dst: Path) -> str:
    arrays = _arrays(src)
    arrays["grid_sqrt"] = np.zeros((*arrays["grid_sqrt"].shape[:2], N + 1, C), np.float32)
    np.savez(dst, **arrays)
    return rf"grid_sqrt' must hold an array of shape \(1, \d+, {N}, {C}\)"


def _ref_missing_array(src: Path, dst: Path) -> str:
    arrays = _arrays(src)
    del arrays["coords"]
    np.savez(dst, **arrays)
    return r"the array 'coords' is missing"


def _ref_meta_not_json(src: Path, dst: Path) -> str:
    np.savez(dst, **{**_arrays(src), "__meta__": np.array("{not json")})
    return r"metadata is not valid JSON"


def _ref_meta_bad_field(src: Path, dst: Path) -> str:
    arrays = _arrays(src)
    meta = json.loads(str(arrays["__meta__"]))
    meta["num_points"] = "many"
    np.savez(dst, **{**arrays, "__meta__": np.array(json.dumps(meta))})
    return r"metadata `num_points` must be an int >= 1, got 'many'"


def _ref_object_array(src: Path, dst: Path) -> str:
    np.savez(dst, **{**_arrays(src), "labels": np.array([None] * N, dtype=object)})
    return r"holds Python objects"


def _ref_lying_header(src: Path, dst: Path) -> str:
    with zipfile.ZipFile(dst, "w") as z:  # stored, valid CRCs: only the header lies
        for key, value in _arrays(src).items():
            buf = io.BytesIO()
            np.save(buf, value, allow_pickle=False)
            data = buf.getvalue()
            if key == "labels":
                old, new = f"'shape': ({N},), }}".encode(), b"'shape': (1000000000,), }"
                old += b" " * (len(new) - len(old))  # the header's padding absorbs the change
                data = data.replace(old, new)
            z.writestr(key + ".npy", data)
    return r"declares \(1000000000,\) int64 .* but holds"


REF_CASES = {n[len("_ref_") :]: f for n, f in globals().items() if n.startswith("_ref_")}


@pytest.mark.parametrize("name", sorted(REF_CASES))
def test_reference_bad_input_names_the_file(reference_file: Path, tmp_path: Path, name: str):
    from lightning_manifold.embedding import ReferenceEmbedding

    bad = tmp_path / "bad.npz"
    pattern = REF_CASES[name](reference_file, bad)
    with pytest.raises(ValueError) as info:
        ReferenceEmbedding.load(bad)
    message = str(info.value)
    assert str(bad) in message, message
    assert re.search(pattern, message), message
    assert "pickle" not in message


def test_a_good_reference_still_loads(reference_file: Path) -> None:
    from lightning_manifold.embedding import ReferenceEmbedding

    ref = ReferenceEmbedding.load(reference_file)
    arrays = _arrays(reference_file)
    for key, value in arrays.items():
        if key != "__meta__":
            np.testing.assert_array_equal(getattr(ref, key).numpy(), value)
