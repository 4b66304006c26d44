"""Read CIFAR-10 from a local directory, without torchvision and without unrestricted pickle.

Two layouts are accepted in ``data_dir`` (or in its ``cifar-10-batches-py`` sub-directory):

* **The official python format** (``cifar-10-python.tar.gz`` unpacked): ``data_batch_1`` ..
  ``data_batch_5`` and ``test_batch``, each a pickled dict with ``b"data"``, a (n, 3072) uint8
  array (1024 red, 1024 green, 1024 blue values per image, row-major), and ``b"labels"``, a list
  of n ints in [0, 10); optional ``batches.meta`` with ``b"label_names"``. Missing training
  batches are allowed (at least one is needed).
* **A safe .npz variant**: ``train.npz`` and ``test.npz``, each with ``x`` (n, 32, 32, 3) uint8
  and ``y`` (n,) integer labels, read with ``allow_pickle=False``.

Why a pickle reader at all: the official CIFAR-10 python batches *are* pickles, and a plain
``pickle.load`` runs whatever code a tampered file names. :class:`RestrictedUnpickler` refuses
every global except the three numpy needs to rebuild an array (``_reconstruct``, ``ndarray``,
``dtype``); dicts, lists, bytes and ints need no global. A file naming anything else (say
``os.system``) raises ``pickle.UnpicklingError`` before anything is called. When you can, convert
once to the .npz variant (:func:`save_npz`) and use that.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "CLASSES",
    "CifarData",
    "RestrictedUnpickler",
    "load_batch",
    "load_cifar10",
    "safe_unpickle",
    "save_npz",
]

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
SUBDIR = "cifar-10-batches-py"
IMAGE_SHAPE = (3, 32, 32)


def _reconstruct() -> Any:
    """numpy's array-unpickling helper (``numpy._core`` in numpy 2, ``numpy.core`` before)."""
    core = getattr(np, "_core", None)
    multiarray = getattr(core, "multiarray", None) if core is not None else None
    if multiarray is None:  # numpy < 2
        multiarray = np.core.multiarray
    return multiarray._reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can only build plain containers and numpy arrays.

    ``find_class`` is the only way a pickle reaches a callable; it returns exactly
    ``numpy.{_core,core}.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype`` and
    refuses every other global with ``pickle.UnpicklingError``.
    """

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed numpy global; refuse anything else."""
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load global '{module}.{name}': a CIFAR-10 batch only needs numpy "
                "arrays, dicts, lists, bytes and ints"
            )
        if name == "_reconstruct":
            return _reconstruct()
        return np.ndarray if name == "ndarray" else np.dtype


def safe_unpickle(fh: IO[bytes]) -> Any:
    """Load one pickle with :class:`RestrictedUnpickler` (``encoding="bytes"``, which reads the
    Python 2 pickles of the official batches with byte-string keys)."""
    return RestrictedUnpickler(fh, encoding="bytes").load()


def load_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One python-format batch: (n, 3, 32, 32) uint8 images and (n,) int64 labels.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a CIFAR-10 batch (unexpected globals, keys or shapes).
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            batch = safe_unpickle(fh)
    except pickle.UnpicklingError as err:
        raise ValueError(f"'{path}' is not a CIFAR-10 python batch: {err}") from err
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(f"'{path}' is not a readable CIFAR-10 python batch: {err}") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"'{path}' must hold a dict with b'data' and b'labels', got {keys}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"'{path}': b'data' must be a (n, 3072) uint8 array, got {data.shape} {data.dtype}"
        )
    return data.reshape(-1, *IMAGE_SHAPE), _check_labels(labels, data.shape[0], f"'{path}'")


def _check_labels(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{where}: labels must be ({n},) integers, got {labels.shape} {labels.dtype}"
        )
    if n and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(
            f"{where}: labels must lie in [0, 10), got [{labels.min()}, {labels.max()}]"
        )
    return labels.astype(np.int64)


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, 32, 32) uint8 images and (n,) labels from an .npz with ``x`` (n, 32, 32, 3), ``y``."""
    with np.load(path, allow_pickle=False) as z:
        if "x" not in z.files or "y" not in z.files:
            raise ValueError(f"'{path}' must hold arrays 'x' and 'y', got {z.files}")
        x, y = z["x"], z["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise ValueError(f"'{path}': 'x' must be (n, 32, 32, 3) uint8, got {x.shape} {x.dtype}")
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), _check_labels(y, x.shape[0], f"'{path}'")


@dataclass(frozen=True)
class CifarData:
    """CIFAR-10 in memory.

    Attributes:
        x_train: (n_train, 3, 32, 32) uint8 images; y_train: (n_train,) int64 labels.
        x_test: (n_test, 3, 32, 32) uint8 images; y_test: (n_test,) int64 labels.
        classes: the 10 class names.
        source: the directory and format read.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    source: str


def _class_names(directory: Path) -> tuple[str, ...]:
    meta = directory / "batches.meta"
    if not meta.is_file():
        return CLASSES
    try:
        with open(meta, "rb") as fh:
            names = safe_unpickle(fh).get(b"label_names", [])
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names) or CLASSES
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError):
        return CLASSES


def load_cifar10(data_dir: str | Path) -> CifarData:
    """Load CIFAR-10 from ``data_dir`` in the python format or the .npz variant (see module doc).

    Raises:
        FileNotFoundError: neither layout is found (the message lists the expected files).
        ValueError: a file of the wrong content.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"`--data-dir` '{root}' is not a directory")
    for directory in (root, root / SUBDIR):
        if (directory / "train.npz").is_file() and (directory / "test.npz").is_file():
            x_tr, y_tr = _load_npz(directory / "train.npz")
            x_te, y_te = _load_npz(directory / "test.npz")
            return CifarData(x_tr, y_tr, x_te, y_te, CLASSES, f"{directory} (npz)")
        batches = [directory / b for b in TRAIN_BATCHES if (directory / b).is_file()]
        if batches and (directory / TEST_BATCH).is_file():
            parts = [load_batch(b) for b in batches]
            x_te, y_te = load_batch(directory / TEST_BATCH)
            return CifarData(
                np.concatenate([p[0] for p in parts]),
                np.concatenate([p[1] for p in parts]),
                x_te,
                y_te,
                _class_names(directory),
                f"{directory} (python format, {len(batches)} training batches)",
            )
    raise FileNotFoundError(
        f"no CIFAR-10 data in '{root}': expected data_batch_1..5 and test_batch (the python "
        f"format, also accepted in '{root / SUBDIR}') or train.npz and test.npz"
    )


def save_npz(data: CifarData, directory: str | Path) -> tuple[Path, Path]:
    """Write the safe .npz variant (``train.npz``, ``test.npz``; ``x`` as (n, 32, 32, 3))."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = (directory / "train.npz", directory / "test.npz")
    for path, x, y in zip(paths, (data.x_train, data.x_test), (data.y_train, data.y_test)):
        np.savez_compressed(path, x=x.transpose(0, 2, 3, 1), y=y)
    return paths
