"""Row and block I/O on ``.npy`` files with ``pread``/``pwrite``: bounded resident memory.

Reading a memory-mapped array touches pages that then count towards the process's resident set
until the mapping is dropped; reading and writing through explicit file offsets keeps the
resident memory of a long pass equal to the blocks in flight, whatever the file size. Several
processes may write disjoint blocks of the same file concurrently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightning_manifold._files import npy_header

__all__ = ["NpyLayout", "create_npy", "npy_layout"]

# Linux transfers at most 0x7ffff000 bytes per read/write call.
_MAX_IO = 1 << 30


@dataclass(frozen=True)
class NpyLayout:
    """Where the data of a C-ordered array lives in a file.

    Attributes:
        path: the file.
        shape: array shape.
        dtype: array dtype (native or explicit byte order).
        offset: byte offset of element 0 in the file.
    """

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int

    @property
    def row_bytes(self) -> int:
        """Bytes of one index along axis 0 (one model, or one matrix row)."""
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` along axis 0 as a fresh in-memory array (stop - start, ...)."""
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        if stop > start:
            with open(self.path, "rb", buffering=0) as f:
                _pread_into(f.fileno(), out, self.offset + start * self.row_bytes)
        return out

    def read_index(self, index: np.ndarray) -> np.ndarray:
        """Rows at integer positions ``index`` (any order, repeats allowed), (len(index), ...).

        Consecutive runs of positions are read with one call each.
        """
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((index.size, *self.shape[1:]), dtype=self.dtype)
        if index.size == 0:
            return out
        with open(self.path, "rb", buffering=0) as f:
            fd = f.fileno()
            breaks = np.flatnonzero(np.diff(index) != 1) + 1
            for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, index.size]):
                start = int(index[lo])
                _pread_into(fd, out[lo:hi], self.offset + start * self.row_bytes)
        return out

    def write_block(self, row: int, col: int, block: np.ndarray) -> None:
        """Write a 2-D ``block`` at ``[row:row+a, col:col+b]`` of a 2-D array file."""
        if len(self.shape) != 2:
            raise ValueError(f"`write_block` needs a 2-D array file, got shape {self.shape}")
        block = np.ascontiguousarray(block, dtype=self.dtype)
        a, b = block.shape
        n_cols = self.shape[1]
        item = self.dtype.itemsize
        with open(self.path, "r+b", buffering=0) as f:
            fd = f.fileno()
            if col == 0 and b == n_cols:
                _pwrite_from(fd, block, self.offset + row * n_cols * item)
                return
            for r in range(a):
                _pwrite_from(fd, block[r], self.offset + ((row + r) * n_cols + col) * item)


def _pread_into(fd: int, out: np.ndarray, offset: int) -> None:
    """Fill the contiguous array ``out`` with bytes read from ``fd`` at ``offset``."""
    view = memoryview(out.reshape(-1).view(np.uint8))
    done = 0
    total = view.nbytes
    while done < total:
        n = os.preadv(fd, [view[done : done + _MAX_IO]], offset + done)
        if n <= 0:
            raise OSError(f"unexpected end of file after {offset + done} bytes")
        done += n


def _pwrite_from(fd: int, data: np.ndarray, offset: int) -> None:
    """Write the contiguous array ``data`` to ``fd`` at ``offset``."""
    view = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
    done = 0
    total = view.nbytes
    while done < total:
        done += os.pwritev(fd, [view[done : done + _MAX_IO]], offset + done)


def npy_layout(path: str | os.PathLike[str]) -> NpyLayout:
    """Read the header of a ``.npy`` file (no data is loaded).

    Raises:
        ValueError: naming the file: not a ``.npy`` file, truncated, Fortran-ordered, or holding
            Python objects.
    """
    path = Path(path)
    header = npy_header(path)  # checks that the file holds all the data its header declares
    shape, fortran, dtype, offset = header.shape, header.fortran_order, header.dtype, header.offset
    if fortran and len(shape) > 1:
        raise ValueError(f"`{path}` must hold a C-ordered array, got a Fortran-ordered one")
    return NpyLayout(path, tuple(int(s) for s in shape), np.dtype(dtype), int(offset))


def create_npy(path: str | os.PathLike[str], shape: tuple[int, ...], dtype: np.dtype) -> NpyLayout:
    """Create a zero-filled ``.npy`` file (sparse on disk) of ``shape`` and return its layout."""
    mm = np.lib.format.open_memmap(Path(path), mode="w+", dtype=dtype, shape=shape)
    del mm
    return npy_layout(path)
