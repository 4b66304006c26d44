"""Where the models come from: a uniform, block-wise view of m models' predictions.

A :class:`ModelSource` lists m models on a common probe of N samples and C classes and loads
any block of them as sqrt-probabilities, the input of the Bhattacharyya kernel (eq. 2.2.2).
Sources never hold more than the requested block in memory: arrays on disk are read with
explicit file offsets (:mod:`._npyio`), trajectory stores one snapshot file at a time.

Sources are picklable (they hold paths, not open files), so the same object can be handed to
the processes that Lightning Fabric launches.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lightning_manifold._files import load_npy
from lightning_manifold.scale._npyio import NpyLayout, npy_layout

__all__ = ["Index", "Kind", "ModelSource"]

Kind = Literal["log_probs", "probs", "sqrt_probs"]
Index = slice | range | Sequence[int] | np.ndarray
_KINDS = ("log_probs", "probs", "sqrt_probs")


def as_index(index: Index, num_models: int, name: str = "index") -> np.ndarray:
    """Normalise a slice/range/sequence of model positions to an (b,) int64 array.

    Raises:
        ValueError: for positions outside ``[0, num_models)`` or a non 1-D index.
    """
    if isinstance(index, slice):
        idx = np.arange(num_models, dtype=np.int64)[index]
    else:
        idx = np.asarray(index)
        if idx.dtype == bool:
            raise ValueError(f"`{name}` must hold integer positions, got a boolean mask")
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"`{name}` must hold integer positions, got dtype {idx.dtype}")
        idx = idx.astype(np.int64, copy=False)
    if idx.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= num_models):
        raise ValueError(
            f"`{name}` must hold positions in [0, {num_models}), got values in "
            f"[{idx.min()}, {idx.max()}]"
        )
    return idx


def _contiguous(idx: np.ndarray) -> bool:
    return (
        idx.size > 0
        and int(idx[-1]) - int(idx[0]) == idx.size - 1
        and bool(np.all(np.diff(idx) == 1))
    )


def _to_sqrt(raw: Tensor, kind: str, device: torch.device | str | None) -> Tensor:
    """Raw stored values -> float64 sqrt-probabilities on ``device``."""
    x = raw.to(device=device, dtype=torch.float64)
    if x.data_ptr() == raw.data_ptr():  # no copy was made: do not modify the caller's data
        x = x.clone()
    if kind == "log_probs":
        return x.mul_(0.5).exp_()
    if kind == "probs":
        return x.clamp_min_(0).sqrt_()
    return x


def _check_labels(labels: Any, num_samples: int, num_classes: int | None) -> np.ndarray | None:
    if labels is None:
        return None
    y = labels.detach().to("cpu").numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if y.shape != (num_samples,):
        raise ValueError(f"`labels` must have shape (N,) = ({num_samples},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"`labels` must be integers, got dtype {y.dtype}")
    if num_classes is not None and y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"`labels` must lie in [0, C) = [0, {num_classes}), got [{y.min()}, {y.max()}]"
        )
    return y.astype(np.int64)


class ModelSource(ABC):
    """m models on a common probe, loadable in blocks.

    Subclasses provide :meth:`_load` (raw stored values of a block) and the sizes; everything
    else (sqrt-probabilities, subsets, class projection) is shared.

    Build one with :meth:`from_array`, :meth:`from_npy` or :meth:`from_stores`.

    Attributes:
        kind: what the raw values are: ``"log_probs"`` (what trajectory stores hold),
            ``"probs"`` or ``"sqrt_probs"``.
        labels: (N,) int64 ground-truth labels, or None when unknown (needed only for
            progress-based landmark selection).
    """

    kind: str = "log_probs"
    labels: np.ndarray | None = None

    @property
    @abstractmethod
    def num_models(self) -> int:
        """m, the number of models."""

    @property
    @abstractmethod
    def num_samples(self) -> int:
        """N, the number of probe samples."""

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """C, the number of classes of the loaded probabilities."""

    @property
    def raw_itemsize(self) -> int:
        """Bytes per stored value (the transient buffer of a block read)."""
        return 8

    @abstractmethod
    def _load(self, index: np.ndarray) -> Tensor:
        """Raw stored values of the models at ``index`` (b,), a (b, N, C) tensor."""

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """A JSON-able description identifying this source (for resuming)."""

    def __len__(self) -> int:
        return self.num_models

    @property
    def bytes_per_model(self) -> int:
        """Bytes of one model as float64 sqrt-probabilities: N * C * 8."""
        return self.num_samples * self.num_classes * 8

    def raw(self, index: Index) -> Tensor:
        """Raw stored values (kind :attr:`kind`) of the models at ``index``: (b, N, C)."""
        return self._load(as_index(index, self.num_models))

    def sqrt_probs(self, index: Index, *, device: torch.device | str | None = None) -> Tensor:
        """Square roots of the probabilities of the models at ``index``.

        Args:
            index: b model positions (slice, range, sequence or int array).
            device: where the result lives (default: CPU).

        Returns:
            (b, N, C) float64 sqrt-probabilities, the input of
            :func:`lightning_manifold.functional.bhattacharyya_from_sqrt` (eq. 2.2.2).
        """
        return _to_sqrt(self.raw(index), self.kind, device)

    def probs(self, index: Index, *, device: torch.device | str | None = None) -> Tensor:
        """(b, N, C) float64 probabilities of the models at ``index``."""
        return self.sqrt_probs(index, device=device).square_()

    def log_probs(self, index: Index, *, device: torch.device | str | None = None) -> Tensor:
        """(b, N, C) float64 log-probabilities of the models at ``index``.

        Exact for stored log-probabilities (no round trip through probabilities).
        """
        raw = self.raw(index)
        if self.kind == "log_probs":
            return raw.to(device=device, dtype=torch.float64)
        return _to_sqrt(raw, self.kind, device).log_().mul_(2.0)

    def subset(self, index: Index) -> ModelSource:
        """The models at ``index`` (in that order) as a new source."""
        return SubsetSource(self, as_index(index, self.num_models))

    def with_class_projection(self, matrix: Tensor | np.ndarray) -> ModelSource:
        """This source seen through a class projection ``p -> p M`` (thesis §3.5.2).

        Args:
            matrix: (C, k) non-negative matrix whose rows sum to 1, e.g.
                :func:`lightning_manifold.functional.random_column_stochastic`.
        """
        return ProjectedSource(self, matrix)

    # ------------------------------------------------------------------ constructors
    @staticmethod
    def from_array(
        array: np.ndarray | Tensor, *, kind: Kind = "log_probs", labels: Any = None
    ) -> ModelSource:
        """Models held in an (m, N, C) array (in memory, a ``np.memmap`` or a tensor).

        A top-level ``np.memmap`` (e.g. ``np.load(path, mmap_mode="r")``) is read through its
        file with explicit offsets, so a pass over it does not grow the resident memory.

        Args:
            array: (m, N, C) values of kind ``kind``.
            kind: ``"log_probs"`` (default), ``"probs"`` or ``"sqrt_probs"``.
            labels: optional (N,) integer labels.
        """
        _check_kind(kind)
        shape = tuple(array.shape)
        if len(shape) != 3 or min(shape) == 0:
            raise ValueError(f"`array` must have shape (m, N, C) with m, N, C > 0, got {shape}")
        if (
            isinstance(array, np.memmap)
            and isinstance(array.base, mmap.mmap)
            and array.flags.c_contiguous
            and array.filename is not None
        ):
            layout = NpyLayout(Path(array.filename), shape, array.dtype, int(array.offset))
            return FileSource(layout, kind=kind, labels=labels)
        return ArraySource(array, kind=kind, labels=labels)

    @staticmethod
    def from_npy(
        path: str | os.PathLike[str], *, kind: Kind = "log_probs", labels: Any = None
    ) -> ModelSource:
        """Models in an (m, N, C) ``.npy`` file, read block by block (never loaded whole)."""
        _check_kind(kind)
        layout = npy_layout(path)
        if len(layout.shape) != 3 or min(layout.shape) == 0:
            raise ValueError(
                f"`path` must hold an (m, N, C) array with m, N, C > 0, got {layout.shape}"
            )
        return FileSource(layout, kind=kind, labels=labels)

    @staticmethod
    def from_stores(stores: Any, *, valid_only: bool = True) -> ModelSource:
        """Every (valid) snapshot of one or more trajectory stores, store by store.

        Args:
            stores: a :class:`~lightning_manifold.store.TrajectoryStore`, a store directory, a
                sequence of those, or a root directory searched with
                :func:`~lightning_manifold.store.list_stores`.
            valid_only: skip snapshots recorded as invalid (diverged models).

        Raises:
            ValueError: if no snapshot is found, or the stores disagree on N, C or labels.
        """
        return StoreSource(stores, valid_only=valid_only)


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"`kind` must be one of {_KINDS}, got {kind!r}")


class ArraySource(ModelSource):
    """Models in an in-memory (m, N, C) numpy array or tensor (any device)."""

    def __init__(self, array: np.ndarray | Tensor, *, kind: str, labels: Any = None) -> None:
        self._array = array
        self.kind = kind
        m, N, C = (int(s) for s in array.shape)
        self._shape = (m, N, C)
        self.labels = _check_labels(labels, N, C)

    @property
    def num_models(self) -> int:
        return self._shape[0]

    @property
    def num_samples(self) -> int:
        return self._shape[1]

    @property
    def num_classes(self) -> int:
        return self._shape[2]

    @property
    def raw_itemsize(self) -> int:
        a = self._array
        return a.element_size() if isinstance(a, Tensor) else a.dtype.itemsize

    def _load(self, index: np.ndarray) -> Tensor:
        a = self._array
        if isinstance(a, Tensor):
            if _contiguous(index):
                return a[int(index[0]) : int(index[-1]) + 1]
            return a[torch.from_numpy(index).to(a.device)]
        if _contiguous(index):
            block = np.array(a[int(index[0]) : int(index[-1]) + 1])
        else:
            block = np.asarray(a[index])
        return torch.from_numpy(np.ascontiguousarray(block))

    def fingerprint(self) -> dict[str, Any]:
        a = self._array
        m = self.num_models
        sample = np.unique(np.linspace(0, m - 1, min(m, 16)).round().astype(np.int64))
        h = hashlib.sha1(self._load(sample).detach().to("cpu").contiguous().numpy().tobytes())
        return {
            "type": "array",
            "shape": list(self._shape),
            "dtype": str(a.dtype),
            "kind": self.kind,
            "sample_sha1": h.hexdigest(),
        }


class FileSource(ModelSource):
    """Models in an (m, N, C) array file, read with explicit offsets."""

    def __init__(self, layout: NpyLayout, *, kind: str, labels: Any = None) -> None:
        self.layout = layout
        self.kind = kind
        self.labels = _check_labels(labels, layout.shape[1], layout.shape[2])

    @property
    def num_models(self) -> int:
        return self.layout.shape[0]

    @property
    def num_samples(self) -> int:
        return self.layout.shape[1]

    @property
    def num_classes(self) -> int:
        return self.layout.shape[2]

    @property
    def raw_itemsize(self) -> int:
        return self.layout.dtype.itemsize

    def _load(self, index: np.ndarray) -> Tensor:
        if _contiguous(index):
            block = self.layout.read_rows(int(index[0]), int(index[-1]) + 1)
        else:
            block = self.layout.read_index(index)
        if not block.dtype.isnative:
            block = block.astype(block.dtype.newbyteorder("="))
        return torch.from_numpy(block)

    def fingerprint(self) -> dict[str, Any]:
        st = os.stat(self.layout.path)
        return {
            "type": "file",
            "path": str(Path(self.layout.path).resolve()),
            "shape": list(self.layout.shape),
            "dtype": str(self.layout.dtype),
            "offset": self.layout.offset,
            "kind": self.kind,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        }


class SubsetSource(ModelSource):
    """Selected models of another source, in the given order."""

    def __init__(self, base: ModelSource, index: np.ndarray) -> None:
        if index.size == 0:
            raise ValueError("`index` must select at least one model, got an empty selection")
        self.base = base
        self.index = index
        self.kind = base.kind
        self.labels = base.labels

    @property
    def num_models(self) -> int:
        return int(self.index.size)

    @property
    def num_samples(self) -> int:
        return self.base.num_samples

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    @property
    def raw_itemsize(self) -> int:
        return self.base.raw_itemsize

    def _load(self, index: np.ndarray) -> Tensor:
        return self.base._load(self.index[index])

    def sqrt_probs(self, index: Index, *, device: torch.device | str | None = None) -> Tensor:
        idx = as_index(index, self.num_models)
        return self.base.sqrt_probs(self.index[idx], device=device)

    def log_probs(self, index: Index, *, device: torch.device | str | None = None) -> Tensor:
        idx = as_index(index, self.num_models)
        return self.base.log_probs(self.index[idx], device=device)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "type": "subset",
            "base": self.base.fingerprint(),
            "count": int(self.index.size),
            "index_sha1": hashlib.sha1(self.index.astype("<i8").tobytes()).hexdigest(),
        }


class ProjectedSource(ModelSource):
    """Another source seen through a class projection ``P -> P M`` (thesis §3.5.2).

    Each sample's probability vector over C classes becomes one over k "random super-classes";
    the loaded sqrt-probabilities are (b, N, k).
    """

    def __init__(self, base: ModelSource, matrix: Tensor | np.ndarray) -> None:
        M = torch.as_tensor(matrix).detach().to(dtype=torch.float64)
        C = base.num_classes
        if M.ndim != 2 or M.shape[0] != C or M.shape[1] < 1:
            raise ValueError(
                f"`class_projection` must be a (C, k) = ({C}, k) matrix, got shape {tuple(M.shape)}"
            )
        if not bool(torch.isfinite(M).all()) or float(M.min()) < 0:
            raise ValueError("`class_projection` must be finite and non-negative")
        dev = float((M.sum(1) - 1).abs().max())
        if dev > 1e-6:
            raise ValueError(
                "`class_projection` rows must sum to 1 (so that p @ M is a probability vector), "
                f"got a maximum deviation of {dev:.3g}"
            )
        self.base = base
        self.matrix = M
        self.kind = "probs"
        self.labels = None  # labels refer to the original classes

    @property
    def num_models(self) -> int:
        return self.base.num_models

    @property
    def num_samples(self) -> int:
        return self.base.num_samples

    @property
    def num_classes(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def raw_itemsize(self) -> int:
        return self.base.raw_itemsize + 16  # base values + float64 probabilities before P M

    def _load(self, index: np.ndarray) -> Tensor:
        from lightning_manifold import functional as F

        P = self.base.probs(index)
        return F.project_classes(P, self.matrix.to(P.device))

    def sqrt_probs(self, index: Index, *, device: torch.device | str | None = None) -> Tensor:
        from lightning_manifold import functional as F

        idx = as_index(index, self.num_models)
        P = self.base.probs(idx, device=device)
        return (
            F.project_classes(P, self.matrix.to(P.device)).to(torch.float64).clamp_min_(0).sqrt_()
        )

    def fingerprint(self) -> dict[str, Any]:
        return {
            "type": "class_projection",
            "base": self.base.fingerprint(),
            "matrix_sha1": hashlib.sha1(self.matrix.numpy().tobytes()).hexdigest(),
            "shape": list(self.matrix.shape),
        }


class StoreSource(ModelSource):
    """The (valid) snapshots of trajectory stores, concatenated store by store.

    Each model is one snapshot file, read whole (no memory map) when its block is loaded.

    Attributes:
        store_paths: the store directories, in order.
        files: (m,) snapshot file of each model.
        model_table: (m, 2) int64: for each model, (store number, record index in the store).
        steps: (m,) int64 optimizer step of each model.
    """

    def __init__(self, stores: Any, *, valid_only: bool = True) -> None:
        from lightning_manifold.store import TrajectoryStore, list_stores, load_stores

        if isinstance(stores, TrajectoryStore | str | os.PathLike):
            stores = [stores]
        opened: list[Any] = []
        for s in stores:
            if isinstance(s, TrajectoryStore) or (Path(s) / "manifest.json").is_file():
                opened.append(s)
            else:
                found = list_stores(s)
                if not found:
                    raise ValueError(f"`stores` entry {str(s)!r} holds no trajectory store")
                opened.extend(found)
        opened = load_stores(opened)  # checks that all stores share the probe
        self.valid_only = bool(valid_only)
        self.store_paths = [Path(s.path) for s in opened]
        files: list[str] = []
        table, steps = [], []
        for number, s in enumerate(opened):
            keep = np.asarray(s.valid, dtype=bool) if self.valid_only else np.ones(len(s), bool)
            records = np.flatnonzero(keep)
            files.extend(str(f) for f in s.log_probs(valid_only=self.valid_only).files)
            table.append(np.stack([np.full(records.size, number), records], 1))
            steps.append(np.asarray(s.steps, dtype=np.int64)[records])
        if not files:
            raise ValueError("`stores` hold no valid snapshot")
        self.files = np.asarray(files)
        self.model_table = np.concatenate(table).astype(np.int64)
        self.steps = np.concatenate(steps)
        first = opened[0]
        self._N, self._C = int(first.num_samples), int(first.num_classes)
        self._dtype = np.dtype(first.dtype) if first.dtype is not None else np.dtype(np.float32)
        self.labels = np.asarray(first.labels, dtype=np.int64)

    @property
    def num_models(self) -> int:
        return int(self.files.size)

    @property
    def num_samples(self) -> int:
        return self._N

    @property
    def num_classes(self) -> int:
        return self._C

    @property
    def raw_itemsize(self) -> int:
        return 8

    def _load(self, index: np.ndarray) -> Tensor:
        out = np.empty((index.size, self._N, self._C), dtype=np.float64)
        for row, i in enumerate(index):
            root = self.store_paths[int(self.model_table[int(i), 0])]
            out[row] = load_npy(  # header checked against (N, C) before reading
                Path(self.files[int(i)]), shape=(self._N, self._C), kinds="f", root=root
            )
        return torch.from_numpy(out)

    def fingerprint(self) -> dict[str, Any]:
        h = hashlib.sha1("\n".join(self.files.tolist()).encode())
        return {
            "type": "stores",
            "paths": [str(p.resolve()) for p in self.store_paths],
            "num_models": self.num_models,
            "shape": [self._N, self._C],
            "valid_only": self.valid_only,
            "files_sha1": h.hexdigest(),
        }
