"""TrajectoryStore: a durable, append-only record of one run's predictions on one probe.

Layout of a store (one run, one probe)::

    <root>/<run_name>/<probe_name>/
        manifest.json            format, version, names, N, C, dtype, meta, compacted records
        records-000001.jsonl     the record log: one JSON line per snapshot appended since
        labels.npy               (N,) int64 probe labels, written once
        snapshots/000000.npy     (N, C) log-probabilities of snapshot 0 (float32 or float64)
        snapshots/000001.npy     ...

Each record describes one snapshot: ``index``, ``step`` (optimizer updates so far), ``epoch``,
``wall_time`` (seconds since the epoch), ``metrics`` (name -> float, e.g. loss and error on the
probe; NaN/inf are written as the strings ``"nan"``, ``"inf"``, ``"-inf"`` to keep strict
JSON), ``valid`` (``False`` for a diverged model) and ``file`` (``snapshots/<index:06d>.npy``).
The records are the manifest's ``records`` followed by the lines of the log it names.

Appending costs O(1) in time and bytes: the snapshot is written to a temporary file, fsync'ed
and renamed into place; then one line is appended to the log with a single ``write`` (and
fsync'ed). Now and then (when the log holds as many records as the manifest, and at least
:data:`COMPACT_MIN_RECORDS`) the manifest is *compacted*: rewritten atomically (temporary file,
fsync, rename, fsync of the directory) with every record and the name of a new, empty log; the
rename is the commit point, after which the old log is deleted. Amortised, a capture writes a
few record lengths of JSON whatever the length of the run.

Crash safety: a kill at any moment leaves a store that opens and lists every completed
snapshot. A snapshot file without a record is not listed; a torn last log line (a write cut
short) is ignored by readers and cut off by the next append. Re-opening for appending
(:meth:`TrajectoryStore.create`) removes only what this store names and writes: its temporary
files, stale record logs, and snapshot files ``snapshots/NNNNNN.npy`` at indices that are not
recorded (files the next appends would overwrite). Links that lead out of the store are never
followed; every file name a manifest or log gives is checked; every ``.npy`` header is checked
against the manifest's N, C and dtype before anything is allocated. Nothing is pickled.

Format versions: 2 (manifest + record log) is written; 1 (every record in the manifest) is
still read, and is converted to 2 by the first write.

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

import bisect
import contextlib
import copy
import json
import math
import os
import re
import stat
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np

from lightning_manifold._files import check_inside, load_npy
from lightning_manifold._names import check_dir_name

if TYPE_CHECKING:  # pragma: no cover
    from lightning_manifold.snapshot import Snapshot

__all__ = [
    "COMPACT_MIN_RECORDS",
    "FORMAT",
    "FORMAT_VERSION",
    "SkippedStore",
    "SnapshotArray",
    "StoreError",
    "StoreWarning",
    "TrajectoryStore",
    "list_stores",
    "load_stores",
    "scan_stores",
    "store_path",
]

FORMAT = "lightning-manifold/trajectory"
"""Value of the manifest's ``format`` field."""
FORMAT_VERSION = 2
"""Manifest format version written by this code (1 is still read); newer versions are refused."""
COMPACT_MIN_RECORDS = 1024
"""The record log is compacted into the manifest once it holds this many records and at least
as many as the manifest (so a compaction's cost is amortised over as many appends)."""

MANIFEST = "manifest.json"
LABELS = "labels.npy"
SNAPSHOTS = "snapshots"
_TMP_SUFFIX = ".tmp"
_TEMP_FILE = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")
_SNAPSHOT_FILE = re.compile(r"^\d{6,}\.npy$")
_LOG_FILE = re.compile(r"^records-(\d{6,})\.jsonl$")
_DTYPES = ("float32", "float64")
_RECORD_KEYS = ("index", "step", "epoch", "wall_time", "metrics", "valid", "file")
_FLOAT_WORDS = ("nan", "inf", "-inf")

_HOOK: Callable[[str], None] | None = None
"""Test hook: called with the name of a point of a write (``"snapshot-written"``,
``"before-replace:manifest.json"``, ``"compact-committed"``); kill tests stop the process there."""


def _hook(point: str) -> None:
    if _HOOK is not None:
        _HOOK(point)


class StoreError(ValueError):
    """A trajectory store (or one of its files) is corrupt, hostile or not what was declared.

    The message names the file and says what was expected and what was found.
    """


class StoreWarning(UserWarning):
    """A store was skipped by :func:`list_stores` (the message names it and says why)."""


def _snapshot_name(index: int) -> str:
    return f"{SNAPSHOTS}/{index:06d}.npy"


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
        _hook(f"before-replace:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


def _save_npy(path: Path, array: np.ndarray, *, durable: bool) -> None:
    _atomic_write(path, lambda f: np.save(f, array, allow_pickle=False), durable=durable)


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _unlink_regular(path: Path) -> None:
    """Delete ``path`` if it is a regular file (never a link's target, never a directory)."""
    with contextlib.suppress(OSError):
        if stat.S_ISREG(os.lstat(path).st_mode):
            os.unlink(path)


# --------------------------------------------------------------------------------------------
# reading and checking manifests and record logs
# --------------------------------------------------------------------------------------------


def _corrupt(where: str, what: str) -> StoreError:
    return StoreError(f"{where} is corrupt: {what}")


def _check_field_int(value: Any, where: str, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        got = "nothing (missing)" if value is None else repr(value)
        raise _corrupt(where, f"`{name}` must be an int >= {minimum}, got {got}")
    return value


def _check_header(manifest: dict[str, Any], where: str) -> None:
    """The static fields of a manifest (everything but the records)."""
    _check_field_int(manifest.get("num_samples"), where, "num_samples", 1)
    _check_field_int(manifest.get("num_classes"), where, "num_classes", 1)
    for key in ("run_name", "probe_name"):
        if not isinstance(manifest.get(key), str):
            raise _corrupt(where, f"`{key}` must be a string, got {manifest.get(key)!r}")
    if manifest.get("dtype") not in (None, *_DTYPES):
        raise _corrupt(where, f"`dtype` must be float32 or float64, got {manifest.get('dtype')!r}")
    if manifest.get("labels", LABELS) != LABELS:
        raise _corrupt(where, f"`labels` must be {LABELS!r}, got {manifest.get('labels')!r}")
    if not isinstance(manifest.get("meta", {}), dict):
        raise _corrupt(where, f"`meta` must be an object, got {manifest.get('meta')!r}")
    if not isinstance(manifest.get("records", []), list):
        raise _corrupt(where, "`records` must be a list")
    log = manifest.get("log")
    if manifest["version"] >= 2 and not (isinstance(log, str) and _LOG_FILE.match(log)):
        raise _corrupt(where, f"`log` must name a file records-NNNNNN.jsonl, got {log!r}")


def _check_record(rec: Any, index: int, last_step: int, where: str) -> dict[str, Any]:
    """One record: every field present and of the right type, ``file`` the store's own name."""
    if not isinstance(rec, dict):
        raise _corrupt(where, f"a record must be an object, got {type(rec).__name__}")
    missing = [k for k in _RECORD_KEYS if k not in rec]
    if missing:
        raise _corrupt(where, f"the record lacks the fields {missing}")
    if rec["index"] != index or isinstance(rec["index"], bool):
        raise _corrupt(
            where, f"`index` must be {index} (records are contiguous), got {rec['index']!r}"
        )
    step = _check_field_int(rec["step"], where, "step", 0)
    if step <= last_step:
        raise _corrupt(
            where, f"`step` must be greater than the previous step {last_step}, got {step}"
        )
    _check_field_int(rec["epoch"], where, "epoch", 0)
    wall = rec["wall_time"]
    if isinstance(wall, bool) or not isinstance(wall, (int, float)):
        raise _corrupt(where, f"`wall_time` must be a number, got {wall!r}")
    metrics = rec["metrics"]
    if not isinstance(metrics, dict) or not all(
        v is None or v in _FLOAT_WORDS or (isinstance(v, (int, float)) and not isinstance(v, bool))
        for v in metrics.values()
    ):
        raise _corrupt(where, f"`metrics` must map names to numbers, got {metrics!r}")
    if not isinstance(rec["valid"], bool):
        raise _corrupt(where, f"`valid` must be true or false, got {rec['valid']!r}")
    if rec["file"] != _snapshot_name(index):
        raise _corrupt(
            where,
            f"`file` of record {index} must be {_snapshot_name(index)!r} (a file the store "
            f"names and writes), got {rec['file']!r}",
        )
    return rec


def _read_log(path: Path, first: int, last_step: int) -> tuple[list[dict[str, Any]], int]:
    """Records of a log file and the byte length of its complete lines (a torn tail is ignored).

    Raises:
        FileNotFoundError: no such log (yet).
        StoreError: a complete line that is not a valid record.
    """
    with open(path, "rb") as f:  # the caller checked it is no link out of the store
        data = f.read()
    end = data.rfind(b"\n") + 1
    records: list[dict[str, Any]] = []
    for n, line in enumerate(data[:end].split(b"\n")[:-1], 1):
        where = f"record log '{path}' line {n}"
        try:
            rec = json.loads(line)
        except ValueError as err:
            raise _corrupt(where, f"not valid JSON ({err})") from None
        records.append(_check_record(rec, first + len(records), last_step, where))
        last_step = rec["step"]
    return records, end


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
        dtype: dtype of the stored snapshots (each file's header must declare it).
        root: the store directory; a file that is a link out of it is refused.
    """

    def __init__(
        self,
        files: list[Path],
        num_samples: int,
        num_classes: int,
        dtype: np.dtype | str,
        root: Path | None = None,
    ) -> None:
        self._files = list(files)
        self._root = root
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
            return load_npy(
                path,
                shape=self._nc,
                dtype=self._dtype,
                mmap=True,
                root=self._root,
                error=StoreError,
            )
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"snapshot file '{path}' listed in the store's records is missing"
            ) from err

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


def _read_manifest(path: Path) -> tuple[dict[str, Any], bytes]:
    """The parsed manifest of the store at ``path`` (format and version checked) and its bytes."""
    if not path.exists():
        raise FileNotFoundError(f"`path` = '{path}' is not a trajectory store: it does not exist")
    if not path.is_dir():
        raise StoreError(f"`path` = '{path}' is a file, not a trajectory store directory")
    manifest_path = check_inside(path, path / MANIFEST, error=StoreError)
    try:
        with open(manifest_path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"`path` = '{path}' is not a trajectory store: {MANIFEST} not found"
        ) from err
    except IsADirectoryError as err:
        raise StoreError(f"'{manifest_path}' is a directory, not a store manifest") from err
    where = f"store manifest '{manifest_path}'"
    try:
        manifest = json.loads(raw)
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise _corrupt(where, f"not valid JSON ({err})") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT:
        raise StoreError(
            f"'{manifest_path}' is not a trajectory store manifest: expected format "
            f"{FORMAT!r}, got {found!r}"
        )
    version = manifest.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _corrupt(where, f"`version` must be an int >= 1, got {version!r}")
    if version > FORMAT_VERSION:
        raise StoreError(
            f"'{manifest_path}' has format version {version!r}, this lightning-manifold reads "
            f"versions 1 to {FORMAT_VERSION}: upgrade lightning-manifold to read it"
        )
    _check_header(manifest, where)
    return manifest, raw


class TrajectoryStore:
    """One run's trajectory on one probe, on disk: open to read, or :meth:`create` to append.

    ``TrajectoryStore(path)`` opens an existing store; :meth:`create` makes a new one (or
    re-opens an existing one after checking it is the same probe). Either can :meth:`append` and
    :meth:`rollback_to`; there must be a single writer per store (one thread at a time; the
    writing methods hold a lock). T is the number of records (valid and invalid); snapshots are
    read lazily.

    Args:
        path: the store directory ``<root>/<run_name>/<probe_name>``.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no ``manifest.json``.
        StoreError: (a ``ValueError``) naming the file: ``path`` is a file; a manifest or record
            log that is corrupt (not JSON, a missing or mistyped field, a file name that is not
            the store's own), not a trajectory store, or of a newer format version; labels
            whose header does not match the manifest; a link out of the store.

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
        self._lock = threading.RLock()
        self._read()

    # ---------------------------------------------------------------- reading

    def _read(self) -> None:
        for _ in range(10):  # a compaction may delete the log between our two reads: retry
            manifest, raw = _read_manifest(self._path)
            manifest_path = self._path / MANIFEST
            records: list[dict[str, Any]] = []
            last_step = -1
            for i, rec in enumerate(manifest.get("records", [])):
                where = f"store manifest '{manifest_path}' record {i}"
                records.append(_check_record(rec, i, last_step, where))
                last_step = rec["step"]
            compacted, log, log_size, log_lines = len(records), manifest.get("log"), 0, 0
            if log is not None:
                log_path = check_inside(self._path, self._path / log, error=StoreError)
                try:
                    lines, log_size = _read_log(log_path, len(records), last_step)
                except FileNotFoundError:
                    with contextlib.suppress(OSError):
                        if (self._path / MANIFEST).read_bytes() != raw:
                            continue
                    lines = []
                records.extend(lines)
                log_lines = len(lines)
            break
        else:  # pragma: no cover - needs ten compactions during one read
            raise StoreError(f"'{manifest_path}' kept changing while it was read; try again")
        for sub in (SNAPSHOTS, LABELS):
            check_inside(self._path, self._path / sub, error=StoreError)
        n, c = manifest["num_samples"], manifest["num_classes"]
        try:
            labels = load_npy(self._path / LABELS, shape=(n,), kinds="iu", error=StoreError)
        except FileNotFoundError:
            raise StoreError(
                f"'{self._path / LABELS}' is missing: the store is incomplete"
            ) from None
        if labels.size and (labels.min() < 0 or labels.max() >= c):
            raise StoreError(
                f"'{self._path / LABELS}' must hold class indices in [0, {c}) (num_classes in "
                f"'{manifest_path}'), got values from {labels.min()} to {labels.max()}"
            )
        self._manifest = {k: v for k, v in manifest.items() if k != "records"}
        self._labels = labels.astype(np.int64, copy=False)
        self._records: list[dict[str, Any]] = records
        self._compacted = compacted
        self._log: str | None = log
        self._log_size = log_size
        self._log_lines = log_lines

    def refresh(self) -> TrajectoryStore:
        """Re-read the manifest and record log from disk (e.g. to follow a run still writing).

        Returns:
            ``self``.
        """
        with self._lock:  # not in the middle of this object's own append
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
        return SnapshotArray(files, self.num_samples, self.num_classes, self.dtype, self._path)

    def snapshot(self, index: int) -> np.ndarray:
        """(N, C) read-only memmap of the log-probabilities of record ``index`` (any validity)."""
        return SnapshotArray(
            [self._path / self._records[index]["file"]],
            self.num_samples,
            self.num_classes,
            self.dtype,
            self._path,
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
        re-opened for appending: leftovers of an interrupted write are removed (only what the
        store names and writes: its temporary files, stale record logs and snapshot files at
        indices not recorded), a torn last log line is cut off, a format-1 store is converted
        to format 2, and ``meta`` is merged into the stored metadata. Use :meth:`rollback_to` to
        drop records written after a checkpoint.

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
            StoreError: an existing store that is corrupt, or a ``snapshots`` link out of it.
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
        if path.exists() and not path.is_dir():
            raise StoreError(f"`path` = '{path}' is a file, not a trajectory store directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
            check_inside(path, path / SNAPSHOTS, error=StoreError)
            (path / SNAPSHOTS).mkdir(exist_ok=True)
            for directory in (path, path / SNAPSHOTS):  # prove we can write there
                _atomic_write(directory / ".write-test", lambda f: f.write(b""), durable=False)
                (directory / ".write-test").unlink()
        except OSError as err:
            raise type(err)(
                f"cannot write a trajectory store at `path` = '{path}': {err.strerror or err}"
            ) from err
        if (path / MANIFEST).exists() or (path / MANIFEST).is_symlink():
            store = cls(path)
            before = copy.deepcopy(store._manifest)
            store._check_same(labels_np, c, probe_name, run_name, dtype_name)  # may fix dtype
            store._durable = bool(durable)
            with store._lock:
                store._manifest["meta"] = {**store._manifest.get("meta", {}), **meta_clean}
                if store._log is None or store._manifest != before:
                    store._compact(store._records)  # format 1, new meta or dtype
                store._remove_leftovers()
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
            "log": "records-000000.jsonl",
            "records": [],
        }
        _unlink_regular(path / manifest["log"])  # a stale log of a store whose manifest is gone
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
        """Delete what an interrupted write left, and only files this store names and writes.

        Temporary files (``.<name>.<pid>.<hex>.tmp``), record logs other than the current one,
        and snapshot files ``snapshots/NNNNNN.npy`` at indices >= T (unrecorded: a crash
        between a snapshot and its record, or during :meth:`rollback_to`); regular files only.
        """
        current = self._log
        for directory in (self._path, self._path / SNAPSHOTS):
            for entry in os.scandir(directory):
                name = entry.name
                if not entry.is_file(follow_symlinks=False):
                    continue
                if directory == self._path:
                    stale = bool(_LOG_FILE.match(name)) and name != current
                else:
                    stale = bool(_SNAPSHOT_FILE.match(name)) and int(name[:-4]) >= len(self)
                if stale or _TEMP_FILE.match(name):
                    _unlink_regular(Path(entry.path))

    def _compact(self, records: list[dict[str, Any]]) -> None:
        """Rewrite the manifest with ``records`` and a new empty log; then drop the old log.

        The manifest's rename is the commit point: before it the old manifest and log hold;
        after it the new manifest names a log that does not exist yet (read as empty).
        """
        gen = 0
        if self._log is not None:
            match = _LOG_FILE.match(self._log)
            assert match is not None  # checked when read
            gen = int(match.group(1)) + 1
        log = f"records-{gen:06d}.jsonl"
        _unlink_regular(self._path / log)  # a stale file can only come from elsewhere
        manifest = {**self._manifest, "version": FORMAT_VERSION, "log": log}
        data = _dump({**manifest, "records": records})
        _atomic_write(self._path / MANIFEST, lambda f: f.write(data), durable=self._durable)
        _hook("compact-committed")
        old, self._log = self._log, log
        self._manifest = manifest
        self._records = list(records)
        self._compacted, self._log_size, self._log_lines = len(records), 0, 0
        if old is not None:
            _unlink_regular(self._path / old)

    def _append_record(self, record: dict[str, Any]) -> None:
        """Append one line to the record log with a single ``write`` (cutting a torn tail)."""
        assert self._log is not None
        line = _dump(record) + b"\n"
        log_path = self._path / self._log
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o666)
        try:
            size = os.fstat(fd).st_size
            if size < self._log_size:
                raise StoreError(
                    f"record log '{log_path}' shrank from {self._log_size} to {size} bytes: "
                    "another process is writing this store"
                )
            if size > self._log_size:  # the torn last line of an interrupted write
                os.ftruncate(fd, self._log_size)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._log_size)
                raise
            if self._durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if self._durable and self._log_size == 0:
            _fsync_dir(self._path)  # the log's directory entry is new
        self._log_size += len(line)
        self._log_lines += 1
        self._records.append(record)

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
        """Append one snapshot durably in O(1) time and bytes; returns its index.

        The snapshot file is complete on disk before its record is appended to the log. A
        snapshot with NaN (or +inf) entries is recorded with ``valid=False`` whatever ``valid``
        says; its values are stored as they are.

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
        epoch = _check_int(epoch, "epoch", 0)
        wall = time.time() if wall_time is None else float(wall_time)
        if not math.isfinite(wall):
            raise ValueError(f"`wall_time` must be finite, got {wall_time}")
        encoded = _check_metrics(metrics)
        is_valid = bool(valid) and not bool(np.isnan(arr).any() or np.isposinf(arr).any())
        with self._lock:
            if self._records and step <= self._records[-1]["step"]:
                raise ValueError(
                    f"`step` must be greater than the last recorded step "
                    f"{self._records[-1]['step']}, got {step}; when resuming call "
                    "rollback_to(step) first"
                )
            index = len(self._records)
            rel = _snapshot_name(index)
            check_inside(self._path, self._path / SNAPSHOTS, error=StoreError)
            _save_npy(self._path / rel, arr, durable=self._durable)
            _hook("snapshot-written")
            if self._log is None or self._manifest.get("dtype") != dtype_name:
                self._manifest["dtype"] = dtype_name  # the first append fixes the dtype
                self._compact(self._records)
            record = {
                "index": index,
                "step": step,
                "epoch": epoch,
                "wall_time": wall,
                "metrics": encoded,
                "valid": is_valid,
                "file": rel,
            }
            self._append_record(record)
            if self._log_lines >= max(COMPACT_MIN_RECORDS, self._compacted):
                self._compact(self._records)
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

        The manifest is compacted atomically with the kept records first, then the dropped
        snapshot files are deleted, so a crash in between only leaves unrecorded files (removed
        by the next :meth:`create`). When resuming from a checkpoint pass the last step captured
        *before* the checkpoint was saved (e.g. the schedule's ``last_taken`` restored from it):
        later records would otherwise be captured again.

        Args:
            step: keep records with ``record.step <= step``; ``-1`` drops everything.

        Returns:
            The number of records dropped.
        """
        step = _check_int(step, "step", -1)
        with self._lock:
            keep = bisect.bisect_right([r["step"] for r in self._records], step)
            dropped = self._records[keep:]
            if not dropped:
                return 0
            check_inside(self._path, self._path / SNAPSHOTS, error=StoreError)
            self._compact(self._records[:keep])
            for rec in dropped:  # named by _check_record / append: snapshots/<index>.npy
                _unlink_regular(self._path / rec["file"])
        return len(dropped)


@dataclass(frozen=True)
class SkippedStore:
    """A store that :func:`scan_stores` found but could not open.

    Attributes:
        path: the store directory.
        reason: the error message (it names the file and what is wrong).
    """

    path: Path
    reason: str


def _is_store_candidate(manifest: Path) -> bool:
    """Whether ``manifest`` claims to be a store's, or is unreadable (other tools' are not)."""
    try:
        with open(manifest, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return True  # corrupt: reported, not silently skipped
    return not isinstance(data, dict) or data.get("format") == FORMAT


def scan_stores(
    root: str | os.PathLike[str],
) -> tuple[list[TrajectoryStore], list[SkippedStore]]:
    """Every trajectory store below ``root``, and those that could not be opened.

    ``manifest.json`` files of other tools (valid JSON objects of another ``format``) are
    ignored; a ``manifest.json`` that is not valid JSON counts as a corrupt store.

    Args:
        root: directory to search recursively (it may itself be a store).

    Returns:
        ``(stores, skipped)``: the stores that open, sorted by path, and a
        :class:`SkippedStore` (path and reason) for each one that does not.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"`root` = '{root}' is not a directory")
    stores: list[TrajectoryStore] = []
    skipped: list[SkippedStore] = []
    for manifest in sorted(p for p in root.rglob(MANIFEST) if _is_store_candidate(p)):
        try:
            stores.append(TrajectoryStore(manifest.parent))
        except (ValueError, OSError) as err:
            skipped.append(SkippedStore(manifest.parent, str(err)))
    return stores, skipped


def list_stores(
    root: str | os.PathLike[str], *, on_error: Literal["warn", "raise"] = "warn"
) -> list[TrajectoryStore]:
    """Every trajectory store below ``root`` (usually ``<root>/<run>/<probe>``), sorted by path.

    ``manifest.json`` files of other tools are ignored; ``root`` itself may be a store. A store
    that cannot be opened (corrupt manifest or log, bad labels, a link out of the store) is
    never skipped silently: with ``on_error="warn"`` (default) each one is skipped with a
    :class:`StoreWarning` that names it and says why (:func:`scan_stores` returns the list);
    with ``on_error="raise"`` the first one raises.

    Args:
        root: directory to search recursively.
        on_error: ``"warn"`` or ``"raise"``.

    Returns:
        The stores that open, sorted by their path.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        StoreError: ``on_error="raise"`` and a store cannot be opened (naming it and why).
    """
    if on_error not in ("warn", "raise"):
        raise ValueError(f"`on_error` must be 'warn' or 'raise', got {on_error!r}")
    stores, skipped = scan_stores(root)
    for bad in skipped:
        if on_error == "raise":
            raise StoreError(f"cannot open the trajectory store '{bad.path}': {bad.reason}")
        warnings.warn(
            f"skipping the trajectory store '{bad.path}': {bad.reason}", StoreWarning, stacklevel=2
        )
    return stores


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
