"""TrajectoryStore: a durable, append-only record of one run's predictions on one probe.

Layout of a store (one run, one probe)::

    <root>/<run_name>/<probe_name>/
        manifest.json            format, version, names, N, C, dtype, meta, records
        labels.npy               (N,) int64 probe labels, written once
        snapshots/000000.npy     (N, C) log-probabilities of snapshot 0 (float32 or float64)
        snapshots/000001.npy     ...

Each record of the manifest describes one snapshot: ``index``, ``step`` (optimizer updates so
far), ``epoch``, ``wall_time`` (seconds since the epoch), ``metrics`` (name -> float, e.g. loss
and error on the probe; NaN/inf are written as the strings ``"nan"``, ``"inf"``, ``"-inf"`` to
keep strict JSON), ``valid`` (``False`` for a diverged model) and ``file`` (relative path).

Crash safety: a snapshot is first written to a temporary file in ``snapshots/``, flushed,
fsync'ed and renamed into place; only then is the manifest rewritten the same way (temporary
file + fsync + ``os.replace``). Readers only look at the manifest, so a crash at any moment
leaves a readable store listing every completed snapshot; stray temporary files and snapshot
files that the manifest does not list are ignored (and removed when the store is re-opened for
appending). Nothing is pickled: ``np.load(..., allow_pickle=False)`` everywhere.

Example::

    from lightning_manifold.store import TrajectoryStore, list_stores

    store = TrajectoryStore.create("runs/seed0/train", labels=y, num_classes=10,
                                   probe_name="train", run_name="seed0")
    store.append(log_probs, step=0, epoch=0, metrics={"loss": 2.3, "error": 0.9})

    run = TrajectoryStore("runs/seed0/train")
    run.steps                      # (T,) int64
    P = run.log_probs()[:]         # (T, N, C) numpy array, loaded on demand
    for s in list_stores("runs"):  # every <run>/<probe> below runs/
        print(s.run_name, s.probe_name, len(s))
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from lightning_manifold._names import check_dir_name

if TYPE_CHECKING:  # pragma: no cover
    from lightning_manifold.snapshot import Snapshot

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SnapshotArray",
    "TrajectoryStore",
    "list_stores",
    "load_stores",
    "store_path",
]

FORMAT = "lightning-manifold/trajectory"
"""Value of the manifest's ``format`` field."""
FORMAT_VERSION = 1
"""Manifest format version written by this code; newer versions are refused when read."""

MANIFEST = "manifest.json"
LABELS = "labels.npy"
SNAPSHOTS = "snapshots"
_TMP_SUFFIX = ".tmp"
_SNAPSHOT_FILE = re.compile(r"^\d{6,}\.npy$")
_DTYPES = ("float32", "float64")
_RECORD_KEYS = ("index", "step", "epoch", "wall_time", "metrics", "valid", "file")


# --------------------------------------------------------------------------------------------
# small validators / converters
# --------------------------------------------------------------------------------------------


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return int(value)


def _to_numpy(array: Any) -> np.ndarray:
    """Torch tensor (any device) or array-like -> numpy, the single I/O edge of the package."""
    if hasattr(array, "detach") and hasattr(array, "to"):  # a torch.Tensor
        import torch

        t = array.detach().to("cpu")
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.to(torch.float32)  # float16 / bfloat16 have no exact numpy twin for bf16
        return t.numpy()
    return np.asarray(array)


def _labels_to_numpy(labels: Any, name: str = "labels") -> np.ndarray:
    arr = _to_numpy(labels)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"`{name}` must have an integer dtype, got {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D of shape (N,), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"`{name}` is empty: a probe needs at least one sample, got shape (0,)")
    if arr.min() < 0:
        raise ValueError(
            f"`{name}` must be non-negative class indices, got a minimum of {arr.min()}"
        )
    return arr.astype(np.int64)


def _normalise_dtype(dtype: Any) -> str | None:
    if dtype is None:
        return None
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPES:
        raise ValueError(f"`dtype` must be float32 or float64, got {dtype}")
    return name


def _encode_float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _decode_float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _check_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float | str]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(f"`metrics` must be a dict of name -> float, got {type(metrics).__name__}")
    out: dict[str, float | str] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"`metrics` keys must be strings, got {key!r}")
        try:
            out[key] = _encode_float(float(value))
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"`metrics[{key!r}]` must be a real number, got {type(value).__name__}"
            ) from err
    return out


def _check_meta(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise TypeError(f"`meta` must be a JSON-serialisable dict, got {type(meta).__name__}")
    try:
        return json.loads(json.dumps(dict(meta), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise TypeError(f"`meta` must be a JSON-serialisable dict (strict JSON): {err}") from err


# --------------------------------------------------------------------------------------------
# atomic file writing
# --------------------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); no-op where a directory cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(_TMP_SUFFIX)


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None], *, durable: bool) -> None:
    """Write ``path`` via a temporary file in the same directory, fsync, ``os.replace``.

    Readers see either the old file or the complete new one, never a partial file.
    """
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


def _save_npy(path: Path, array: np.ndarray, *, durable: bool) -> None:
    _atomic_write(path, lambda f: np.save(f, array, allow_pickle=False), durable=durable)


def _load_npy(path: Path, *, mmap: bool) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


# --------------------------------------------------------------------------------------------
# lazy (T, N, C) view
# --------------------------------------------------------------------------------------------


class SnapshotArray:
    """A lazily loaded (T, N, C) array of log-probabilities, one npy file per snapshot.

    Nothing is read until indexed. ``arr[t]`` returns snapshot t as a read-only memory-mapped
    (N, C) array; ``arr[a:b]``, ``arr[[0, 5]]``, ``arr[mask]`` and ``arr[:, rows, cols]`` load
    the selected snapshots and stack them into an ordinary (T', ...) array; ``np.asarray(arr)``
    loads everything. Supports ``len``, ``shape``, ``dtype``, ``ndim`` and iteration (memmaps).

    Args:
        files: one npy path per snapshot, in time order.
        num_samples: N.
        num_classes: C.
        dtype: dtype of the stored snapshots.
    """

    def __init__(
        self, files: list[Path], num_samples: int, num_classes: int, dtype: np.dtype | str
    ) -> None:
        self._files = list(files)
        self._nc = (int(num_samples), int(num_classes))
        self._dtype = np.dtype(dtype)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(T, N, C)."""
        return (len(self._files), *self._nc)

    @property
    def dtype(self) -> np.dtype:
        """float32 or float64."""
        return self._dtype

    @property
    def ndim(self) -> int:
        """3."""
        return 3

    @property
    def files(self) -> list[Path]:
        """The npy file of each snapshot, in time order."""
        return list(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def _load(self, t: int) -> np.ndarray:
        path = self._files[t]
        try:
            arr = _load_npy(path, mmap=True)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"snapshot file {str(path)!r} listed in the manifest is missing"
            ) from err
        if arr.shape != self._nc:
            raise ValueError(
                f"snapshot file {str(path)!r} must have shape (N, C) = {self._nc}, got {arr.shape}"
            )
        return arr

    def __iter__(self) -> Iterator[np.ndarray]:
        for t in range(len(self._files)):
            yield self._load(t)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis or k is None for k in key):
            return np.asarray(self)[key]
        first, rest = key[0], key[1:]
        if isinstance(first, (int, np.integer)):
            t = int(first)
            if not -len(self) <= t < len(self):
                raise IndexError(f"snapshot index {t} is out of range for {len(self)} snapshots")
            arr = self._load(t % len(self))
            return arr[rest] if rest else arr
        times = np.arange(len(self))[first]
        if times.ndim != 1:
            raise IndexError(f"the snapshot (first) index must select a 1-D set, got {first!r}")
        if times.size == 0:
            return np.empty((0, *self._nc), dtype=self._dtype)[(slice(None), *rest)]
        return np.stack([np.asarray(self._load(int(t))[rest]) for t in times])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if len(self) == 0:
            out = np.empty(self.shape, dtype=self._dtype)
        else:
            out = np.stack([np.asarray(a) for a in self])
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"SnapshotArray(shape={self.shape}, dtype={self._dtype})"


# --------------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------------


def store_path(root: str | os.PathLike[str], run_name: str, probe_name: str) -> Path:
    """``<root>/<run_name>/<probe_name>``, the directory of one run's store for one probe."""
    return (
        Path(root) / check_dir_name(run_name, "run_name") / check_dir_name(probe_name, "probe_name")
    )


class TrajectoryStore:
    """One run's trajectory on one probe, on disk: open to read, or :meth:`create` to append.

    ``TrajectoryStore(path)`` opens an existing store; :meth:`create` makes a new one (or
    re-opens an existing one after checking it is the same probe). Either can :meth:`append` and
    :meth:`rollback_to`; there must be a single writer per store. T is the number of records
    (valid and invalid); snapshots are read lazily.

    Args:
        path: the store directory ``<root>/<run_name>/<probe_name>``.

    Raises:
        FileNotFoundError: no ``manifest.json`` in ``path``.
        ValueError: a manifest that is not valid JSON, not a trajectory store, or of a newer
            format version than this code understands; inconsistent labels.

    Example::

        run = TrajectoryStore("manifold_runs/seed0/train")
        ok = run.valid                   # (T,) bool
        steps = run.steps[ok]            # (T',) int64
        P = np.exp(run.log_probs()[:])   # (T', N, C) probabilities of the valid snapshots
        loss = run.metrics("loss")       # (T,) float64, NaN where missing
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._durable = True
        self._read()

    # ---------------------------------------------------------------- reading

    def _read(self) -> None:
        manifest_path = self._path / MANIFEST
        try:
            text = manifest_path.read_text(encoding="utf-8")
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"`path` = '{self._path}' is not a trajectory store: {MANIFEST} not found"
            ) from err
        try:
            manifest = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"'{manifest_path}' is not valid JSON: {err}") from err
        found = manifest.get("format") if isinstance(manifest, dict) else None
        if found != FORMAT:
            raise ValueError(
                f"'{manifest_path}' is not a trajectory store manifest: expected format "
                f"{FORMAT!r}, got {found!r}"
            )
        version = manifest.get("version")
        if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
            raise ValueError(
                f"'{manifest_path}' has format version {version!r}, this lightning-manifold reads "
                f"versions 1 to {FORMAT_VERSION}: upgrade lightning-manifold to read it"
            )
        labels = _load_npy(self._path / LABELS, mmap=False)
        if labels.shape != (manifest["num_samples"],) or labels.dtype.kind not in "iu":
            raise ValueError(
                f"'{self._path / LABELS}' must be (N,) = ({manifest['num_samples']},) integers, "
                f"got shape {labels.shape} dtype {labels.dtype}"
            )
        records = manifest.get("records", [])
        for i, rec in enumerate(records):
            missing = [k for k in _RECORD_KEYS if k not in rec]
            if missing:
                raise ValueError(f"'{manifest_path}': record {i} lacks the fields {missing}")
            rel = Path(rec["file"])
            if rel.is_absolute() or ".." in rel.parts:
                raise ValueError(
                    f"'{manifest_path}': record {i} must name a file inside the store, "
                    f"got {rec['file']!r}"
                )
        self._manifest = manifest
        self._labels = labels.astype(np.int64, copy=False)
        self._records: list[dict[str, Any]] = records

    def refresh(self) -> TrajectoryStore:
        """Re-read the manifest from disk (e.g. to follow a run that is still writing).

        Returns:
            ``self``.
        """
        self._read()
        return self

    @property
    def path(self) -> Path:
        """The store directory."""
        return self._path

    @property
    def format_version(self) -> int:
        """Manifest format version."""
        return int(self._manifest["version"])

    @property
    def probe_name(self) -> str:
        """Name of the probe (``"train"``, ``"val"``, ...)."""
        return str(self._manifest["probe_name"])

    @property
    def run_name(self) -> str:
        """Name of the run."""
        return str(self._manifest["run_name"])

    @property
    def meta(self) -> dict[str, Any]:
        """User metadata given at :meth:`create` (a copy)."""
        return copy.deepcopy(self._manifest.get("meta", {}))

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 probe labels (a copy)."""
        return self._labels.copy()

    @property
    def num_samples(self) -> int:
        """N."""
        return int(self._manifest["num_samples"])

    @property
    def num_classes(self) -> int:
        """C."""
        return int(self._manifest["num_classes"])

    @property
    def dtype(self) -> np.dtype:
        """dtype of the stored log-probabilities (float32 until the first append fixes it)."""
        return np.dtype(self._manifest.get("dtype") or "float32")

    @property
    def records(self) -> list[dict[str, Any]]:
        """One dict per snapshot (index, step, epoch, wall_time, metrics, valid, file); a copy,
        with metric values decoded to floats."""
        out = copy.deepcopy(self._records)
        for rec in out:
            rec["metrics"] = {k: _decode_float(v) for k, v in rec["metrics"].items()}
        return out

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return (
            f"TrajectoryStore(path='{self._path}', run_name={self.run_name!r}, "
            f"probe_name={self.probe_name!r}, snapshots={len(self)}, N={self.num_samples}, "
            f"C={self.num_classes})"
        )

    @property
    def steps(self) -> np.ndarray:
        """(T,) int64 optimizer step of every record (strictly increasing)."""
        return np.array([r["step"] for r in self._records], dtype=np.int64)

    @property
    def epochs(self) -> np.ndarray:
        """(T,) int64 epoch of every record."""
        return np.array([r["epoch"] for r in self._records], dtype=np.int64)

    @property
    def wall_times(self) -> np.ndarray:
        """(T,) float64 wall time (seconds since the epoch) of every record."""
        return np.array([r["wall_time"] for r in self._records], dtype=np.float64)

    @property
    def valid(self) -> np.ndarray:
        """(T,) bool, ``False`` for snapshots of a diverged model (non-finite outputs)."""
        return np.array([bool(r["valid"]) for r in self._records], dtype=bool)

    @property
    def metric_names(self) -> list[str]:
        """Sorted names of every metric recorded in at least one record."""
        return sorted({k for r in self._records for k in r["metrics"]})

    def metrics(self, name: str, *, valid_only: bool = False) -> np.ndarray:
        """(T,) float64 values of one metric, NaN where a record lacks it.

        Args:
            name: metric name, e.g. ``"loss"``.
            valid_only: keep only valid records (then (T',) aligned with :meth:`log_probs`).

        Raises:
            KeyError: no record has this metric.
        """
        if name not in self.metric_names:
            raise KeyError(f"no metric {name!r} in store '{self._path}'; have {self.metric_names}")
        values = np.array(
            [_decode_float(r["metrics"].get(name)) for r in self._records], dtype=np.float64
        )
        return values[self.valid] if valid_only else values

    def log_probs(self, valid_only: bool = True) -> SnapshotArray:
        """Lazily loaded (T, N, C) log-probabilities (see :class:`SnapshotArray`).

        Args:
            valid_only: keep only the valid snapshots (then T is ``valid.sum()``; select the
                matching steps with ``steps[valid]``).

        Returns:
            A :class:`SnapshotArray` over the selected snapshots (a fixed view; call
            :meth:`refresh` and this again to see later snapshots).
        """
        records = [r for r in self._records if r["valid"] or not valid_only]
        files = [self._path / r["file"] for r in records]
        return SnapshotArray(files, self.num_samples, self.num_classes, self.dtype)

    def snapshot(self, index: int) -> np.ndarray:
        """(N, C) read-only memmap of the log-probabilities of record ``index`` (any validity)."""
        return SnapshotArray(
            [self._path / self._records[index]["file"]],
            self.num_samples,
            self.num_classes,
            self.dtype,
        )[0]

    # ---------------------------------------------------------------- writing

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        labels: Any,
        num_classes: int,
        probe_name: str,
        run_name: str,
        meta: Mapping[str, Any] | None = None,
        dtype: Any = None,
        durable: bool = True,
    ) -> TrajectoryStore:
        """Create a store for appending, or re-open an existing one (resume).

        If ``path`` already holds a store with the same labels, C, probe and run names, it is
        re-opened for appending: leftovers of an interrupted write (temporary files, snapshot
        files the manifest does not list) are removed, and ``meta`` is merged into the stored
        metadata. Use :meth:`rollback_to` to drop records written after a checkpoint.

        Args:
            path: the store directory, usually :func:`store_path` ``(root, run_name, probe_name)``.
            labels: (N,) integer probe labels (torch tensor on any device, or array).
            num_classes: C (>= max label + 1).
            probe_name: name of the probe.
            run_name: name of the run.
            meta: JSON-serialisable metadata (hyper-parameters, ...).
            dtype: float32 / float64 for the snapshots; default: the dtype of the first append.
            durable: fsync files and directories (turn off only for throw-away stores).

        Returns:
            The store, ready for :meth:`append`.

        Raises:
            ValueError: invalid arguments, or an existing store at ``path`` whose labels, C,
                names or dtype differ (the message says what differs).
            OSError: ``path`` cannot be created or written (the message names it).
        """
        labels_np = _labels_to_numpy(labels)
        c = _check_int(num_classes, "num_classes", 1)
        if c < int(labels_np.max()) + 1:
            raise ValueError(
                f"`num_classes` must be >= max(labels) + 1 = {int(labels_np.max()) + 1}, got {c}"
            )
        check_dir_name(probe_name, "probe_name")
        check_dir_name(run_name, "run_name")
        meta_clean = _check_meta(meta)
        dtype_name = _normalise_dtype(dtype)
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            (path / SNAPSHOTS).mkdir(exist_ok=True)
            for directory in (path, path / SNAPSHOTS):  # prove we can write there
                _atomic_write(directory / ".write-test", lambda f: f.write(b""), durable=False)
                (directory / ".write-test").unlink()
        except OSError as err:
            raise type(err)(
                f"cannot write a trajectory store at `path` = '{path}': {err.strerror or err}"
            ) from err
        if (path / MANIFEST).exists():
            store = cls(path)
            store._check_same(labels_np, c, probe_name, run_name, dtype_name)
            store._durable = bool(durable)
            store._remove_leftovers()
            if meta_clean:
                merged = {**store._manifest.get("meta", {}), **meta_clean}
                if merged != store._manifest.get("meta", {}):
                    store._write_manifest({**store._manifest, "meta": merged})
            return store
        _save_npy(path / LABELS, labels_np, durable=durable)
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "run_name": run_name,
            "probe_name": probe_name,
            "num_samples": int(labels_np.size),
            "num_classes": c,
            "dtype": dtype_name,
            "labels": LABELS,
            "created": time.time(),
            "meta": meta_clean,
            "records": [],
        }
        _atomic_write(path / MANIFEST, lambda f: f.write(_dump(manifest)), durable=durable)
        store = cls(path)
        store._durable = bool(durable)
        return store

    def _check_same(
        self, labels: np.ndarray, num_classes: int, probe: str, run: str, dtype: str | None
    ) -> None:
        problems = []
        if self._labels.shape != labels.shape:
            problems.append(
                f"labels have shape {self._labels.shape} stored vs {labels.shape} given"
            )
        elif not np.array_equal(self._labels, labels):
            diff = np.flatnonzero(self._labels != labels)
            problems.append(
                f"{diff.size} of {labels.size} labels differ, first at index {diff[0]} "
                f"(stored {self._labels[diff[0]]}, given {labels[diff[0]]})"
            )
        if self.num_classes != num_classes:
            problems.append(f"num_classes {self.num_classes} stored vs {num_classes} given")
        if self.probe_name != probe:
            problems.append(f"probe_name {self.probe_name!r} stored vs {probe!r} given")
        if self.run_name != run:
            problems.append(f"run_name {self.run_name!r} stored vs {run!r} given")
        stored_dtype = self._manifest.get("dtype")
        if dtype is not None and stored_dtype is not None and dtype != stored_dtype:
            problems.append(f"dtype {stored_dtype} stored vs {dtype} given")
        if problems:
            raise ValueError(
                f"a different trajectory store already exists at `path` = '{self._path}': "
                + "; ".join(problems)
                + ". Use another run_name or directory."
            )
        if dtype is not None and stored_dtype is None:
            self._manifest["dtype"] = dtype

    def _remove_leftovers(self) -> None:
        """Delete temporary files and snapshot files the manifest does not list."""
        listed = {Path(r["file"]).name for r in self._records}
        for directory in (self._path, self._path / SNAPSHOTS):
            for entry in directory.iterdir():
                name = entry.name
                orphan = directory.name == SNAPSHOTS and bool(_SNAPSHOT_FILE.match(name))
                if _is_temp(name) or (orphan and name not in listed):
                    with contextlib.suppress(OSError):
                        entry.unlink()

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        data = _dump(manifest)
        _atomic_write(self._path / MANIFEST, lambda f: f.write(data), durable=self._durable)
        self._manifest = manifest
        self._records = manifest["records"]

    def append(
        self,
        log_probs: Any,
        *,
        step: int,
        epoch: int,
        wall_time: float | None = None,
        metrics: Mapping[str, Any] | None = None,
        valid: bool = True,
    ) -> int:
        """Append one snapshot durably; returns its index.

        The snapshot file is complete on disk before the manifest lists it. A snapshot with
        NaN (or +inf) entries is recorded with ``valid=False`` whatever ``valid`` says; its
        values are stored as they are.

        Args:
            log_probs: (N, C) log-probabilities, torch tensor (any device) or numpy array.
                Cast to the store's dtype (fixed by ``create(dtype=)`` or the first append;
                float16 / bfloat16 tensors become float32).
            step: optimizer updates so far; strictly greater than the last record's step.
            epoch: epoch at capture (>= 0).
            wall_time: seconds since the epoch; default ``time.time()``.
            metrics: name -> real number (loss, error, ...); tensors of one element are fine.
            valid: ``False`` for a diverged model.

        Returns:
            The record's index (= number of records before it).

        Raises:
            ValueError: wrong shape or dtype, ``step`` not after the last step (resume without
                :meth:`rollback_to`?), negative ``epoch``.
            TypeError: non-numeric metrics or arguments of the wrong type.
        """
        arr = _to_numpy(log_probs)
        expected = (self.num_samples, self.num_classes)
        if arr.shape != expected:
            raise ValueError(f"`log_probs` must have shape (N, C) = {expected}, got {arr.shape}")
        if arr.dtype.kind != "f":
            raise ValueError(f"`log_probs` must be floating point, got dtype {arr.dtype}")
        dtype_name = self._manifest.get("dtype") or (
            arr.dtype.name if arr.dtype.name in _DTYPES else "float32"
        )
        arr = np.ascontiguousarray(arr, dtype=dtype_name)
        step = _check_int(step, "step", 0)
        if self._records and step <= self._records[-1]["step"]:
            raise ValueError(
                f"`step` must be greater than the last recorded step {self._records[-1]['step']}"
                f", got {step}; when resuming call rollback_to(step) first"
            )
        epoch = _check_int(epoch, "epoch", 0)
        wall = time.time() if wall_time is None else float(wall_time)
        if not math.isfinite(wall):
            raise ValueError(f"`wall_time` must be finite, got {wall_time}")
        encoded = _check_metrics(metrics)
        is_valid = bool(valid) and not bool(np.isnan(arr).any() or np.isposinf(arr).any())
        index = len(self._records)
        rel = f"{SNAPSHOTS}/{index:06d}.npy"
        _save_npy(self._path / rel, arr, durable=self._durable)
        record = {
            "index": index,
            "step": step,
            "epoch": epoch,
            "wall_time": wall,
            "metrics": encoded,
            "valid": is_valid,
            "file": rel,
        }
        self._write_manifest(
            {**self._manifest, "dtype": dtype_name, "records": [*self._records, record]}
        )
        return index

    def append_snapshot(self, snapshot: Snapshot) -> int:
        """Append a :class:`~lightning_manifold.snapshot.Snapshot` (see :meth:`append`).

        Raises:
            ValueError: the snapshot's probe is not this store's probe.
        """
        if snapshot.probe != self.probe_name:
            raise ValueError(
                f"`snapshot.probe` must be {self.probe_name!r} for this store, "
                f"got {snapshot.probe!r}"
            )
        return self.append(
            snapshot.log_probs,
            step=snapshot.step,
            epoch=snapshot.epoch,
            wall_time=snapshot.wall_time,
            metrics=snapshot.metrics,
            valid=snapshot.valid,
        )

    def rollback_to(self, step: int) -> int:
        """Drop every record with a step greater than ``step`` (resume from a checkpoint).

        The manifest is rewritten atomically first, then the dropped snapshot files are
        deleted, so a crash in between only leaves ignored orphan files. When resuming from a
        checkpoint pass the last step captured *before* the checkpoint was saved (e.g. the
        schedule's ``last_taken`` restored from it): later records would otherwise be captured
        again.

        Args:
            step: keep records with ``record.step <= step``; ``-1`` drops everything.

        Returns:
            The number of records dropped.
        """
        step = _check_int(step, "step", -1)
        keep = [r for r in self._records if r["step"] <= step]
        dropped = [r for r in self._records if r["step"] > step]
        if not dropped:
            return 0
        self._write_manifest({**self._manifest, "records": keep})
        for rec in dropped:
            with contextlib.suppress(OSError):
                (self._path / rec["file"]).unlink()
        return len(dropped)


def _dump(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _is_store_manifest(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def list_stores(root: str | os.PathLike[str]) -> list[TrajectoryStore]:
    """Every trajectory store below ``root`` (usually ``<root>/<run>/<probe>``), sorted by path.

    ``manifest.json`` files of other tools are skipped; ``root`` itself may be a store.

    Args:
        root: directory to search recursively.

    Returns:
        The stores, sorted by their path.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"`root` = '{root}' is not a directory")
    manifests = sorted(p for p in root.rglob(MANIFEST) if _is_store_manifest(p))
    return [TrajectoryStore(p.parent) for p in manifests]


def load_stores(
    paths: Iterable[str | os.PathLike[str] | TrajectoryStore],
) -> list[TrajectoryStore]:
    """Open several stores that must share the same probe (labels and C), e.g. runs to compare.

    Args:
        paths: store directories or already open stores.

    Returns:
        The stores, in the given order.

    Raises:
        ValueError: no paths, or two stores with different probe labels / class counts (the
            message names both stores and what differs).
    """
    stores = [p if isinstance(p, TrajectoryStore) else TrajectoryStore(p) for p in paths]
    if not stores:
        raise ValueError("`paths` must name at least one store, got none")
    first = stores[0]
    for other in stores[1:]:
        what = None
        if other.num_classes != first.num_classes:
            what = f"num_classes {first.num_classes} vs {other.num_classes}"
        elif other.labels.shape != first.labels.shape:
            what = f"labels of shape {first.labels.shape} vs {other.labels.shape}"
        elif not np.array_equal(other.labels, first.labels):
            diff = np.flatnonzero(other.labels != first.labels)
            what = f"{diff.size} of {first.num_samples} labels differ, first at index {diff[0]}"
        if what is not None:
            raise ValueError(
                f"stores '{first.path}' and '{other.path}' have different probes: {what}"
            )
    return stores
